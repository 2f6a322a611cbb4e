//! The simulator's reference: what the source volume's files must hold.
//!
//! Deliberately small (two directories, regular files, hard links, extended
//! attributes): the
//! simulator's point is the mirror, and `fs/tests/common/fsmodel.rs` already
//! holds the volume's full semantics to account in the property tests. A
//! file is its bytes; a name maps to an inode number the volume chose.

use std::collections::BTreeMap;

use twinfs_fs::volume::{View, Volume};
use twinfs_fs::{FileKind, Ino};

/// Names and contents of the files the workload made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// (directory, name) → inode.
    pub names: BTreeMap<(u64, Vec<u8>), u64>,
    /// Inode → its bytes.
    pub files: BTreeMap<u64, Vec<u8>>,
    /// Inode → its extended attributes (absent: none).
    pub xattrs: BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Model {
    pub fn links(&self, ino: u64) -> usize {
        self.names.values().filter(|&&i| i == ino).count()
    }

    pub fn add(&mut self, dir: u64, name: &[u8], ino: u64) {
        self.names.insert((dir, name.to_vec()), ino);
        self.files.entry(ino).or_default();
    }

    /// Removes a name; the file goes with its last name.
    pub fn remove(&mut self, dir: u64, name: &[u8]) {
        if let Some(ino) = self.names.remove(&(dir, name.to_vec())) {
            if self.links(ino) == 0 {
                self.files.remove(&ino);
                self.xattrs.remove(&ino);
            }
        }
    }

    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) {
        let f = self.files.get_mut(&ino).expect("a live file");
        let end = off as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[off as usize..end].copy_from_slice(data);
    }

    pub fn truncate(&mut self, ino: u64, size: u64) {
        self.files
            .get_mut(&ino)
            .expect("a live file")
            .resize(size as usize, 0);
    }

    pub fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) {
        self.xattrs
            .entry(ino)
            .or_default()
            .insert(name.to_vec(), value.to_vec());
    }

    pub fn remove_xattr(&mut self, ino: u64, name: &[u8]) {
        if let Some(x) = self.xattrs.get_mut(&ino) {
            x.remove(name);
            if x.is_empty() {
                self.xattrs.remove(&ino);
            }
        }
    }

    /// What `view` of the volume holds in directories `dirs`, as a model;
    /// an error names what could not be read.
    pub fn of_volume(vol: &Volume, view: View, dirs: &[u64]) -> Result<Model, String> {
        let mut m = Model::default();
        for &dir in dirs {
            let mut entries = Vec::new();
            vol.readdir(view, Ino(dir), 0, &mut |l| {
                entries.push(l);
                true
            })
            .map_err(|e| format!("readdir of directory {dir}: {e}"))?;
            for l in entries {
                if l.name == b"." || l.name == b".." || l.kind == FileKind::Directory {
                    continue;
                }
                m.names.insert((dir, l.name.clone()), l.ino.0);
                if m.files.contains_key(&l.ino.0) {
                    continue;
                }
                let a = vol
                    .getattr(view, l.ino)
                    .map_err(|e| format!("getattr of inode {}: {e}", l.ino.0))?;
                let data = vol
                    .read(view, l.ino, 0, a.size as u32)
                    .map_err(|e| format!("read of inode {}: {e}", l.ino.0))?;
                if data.len() as u64 != a.size {
                    return Err(format!(
                        "inode {} has size {} but {} bytes read",
                        l.ino.0,
                        a.size,
                        data.len()
                    ));
                }
                m.files.insert(l.ino.0, data);
                let names = vol
                    .listxattr(view, l.ino)
                    .map_err(|e| format!("listxattr of inode {}: {e}", l.ino.0))?;
                for name in names {
                    let value = vol
                        .getxattr(view, l.ino, &name)
                        .map_err(|e| format!("getxattr of inode {}: {e}", l.ino.0))?;
                    m.set_xattr(l.ino.0, &name, &value);
                }
            }
        }
        for (&ino, _) in m.files.iter() {
            let a = vol
                .getattr(view, Ino(ino))
                .map_err(|e| format!("getattr of inode {ino}: {e}"))?;
            if a.nlink as usize != m.links(ino) {
                return Err(format!(
                    "inode {ino} has nlink {} but {} names",
                    a.nlink,
                    m.links(ino)
                ));
            }
        }
        Ok(m)
    }

    /// A short description of how `self` differs from `other`.
    pub fn diff(&self, other: &Model) -> String {
        let mut out = Vec::new();
        for (k, v) in &self.names {
            match other.names.get(k) {
                None => out.push(format!("{}/{} only in the first", k.0, esc(&k.1))),
                Some(w) if w != v => out.push(format!("{}/{}: inode {v} vs {w}", k.0, esc(&k.1))),
                _ => {}
            }
        }
        for k in other.names.keys() {
            if !self.names.contains_key(k) {
                out.push(format!("{}/{} only in the second", k.0, esc(&k.1)));
            }
        }
        for (ino, d) in &self.files {
            if let Some(e) = other.files.get(ino) {
                if d != e {
                    let first = d.iter().zip(e).position(|(a, b)| a != b);
                    out.push(format!(
                        "inode {ino}: {} vs {} bytes, first difference at {first:?}",
                        d.len(),
                        e.len()
                    ));
                }
            }
        }
        for ino in self.xattrs.keys().chain(other.xattrs.keys()) {
            if self.xattrs.get(ino) != other.xattrs.get(ino) {
                out.push(format!(
                    "inode {ino}: xattrs {:?} vs {:?}",
                    self.xattrs.get(ino).map(|x| x.len()),
                    other.xattrs.get(ino).map(|x| x.len())
                ));
                break;
            }
        }
        if out.is_empty() {
            "no difference".into()
        } else {
            out.truncate(8);
            out.join("; ")
        }
    }
}

fn esc(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}
