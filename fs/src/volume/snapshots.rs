//! Snapshots: named, retained CPs in the metadata tree, created and deleted by a CP.

use super::*;

impl Volume {
    /// Creates a snapshot of the current state. Returns its id.
    pub fn snapshot_create(&self, name: &str) -> Result<u64> {
        self.create_snapshot(Some(name)).map(|(id, _)| id)
    }

    /// Creates a snapshot named `cp-N` after the CP `N` it holds; returns its
    /// id and name.
    pub fn snapshot_create_named_by_cp(&self) -> Result<(u64, String)> {
        self.create_snapshot(None)
    }

    fn create_snapshot(&self, name: Option<&str>) -> Result<(u64, String)> {
        let taken = |st: &State, name: &str| {
            st.snapshots.iter().any(|(_, s)| s.name == name.as_bytes())
                || st
                    .retained
                    .create
                    .iter()
                    .any(|(_, s)| s.name == name.as_bytes())
        };
        if let Some(name) = name {
            check_snapshot_name(name)?;
            if taken(&self.inner.state.read(), name) {
                return Err(FsError::Exists);
            }
        }
        // Commit the current state, then record that image as the snapshot.
        self.checkpoint()?;
        let (id, name) = {
            let mut st = self.inner.state.write();
            if st.snapshots.len() + st.retained.create.len() >= MAX_SNAPSHOTS {
                return Err(FsError::NoSpace);
            }
            let name = match name {
                Some(n) => n.to_string(),
                None => format!("cp-{}", st.image.cp.0),
            };
            if taken(&st, &name) {
                return Err(FsError::Exists);
            }
            let id = st
                .snapshots
                .iter()
                .map(|(i, _)| *i)
                .chain(st.retained.create.iter().map(|(i, _)| *i))
                .max()
                .unwrap_or(0)
                + 1;
            let sb = &st.image;
            let img = RetainedImage {
                name: name.as_bytes().to_vec(),
                cp: sb.cp,
                created: self.inner.cfg.clock.now(),
                meta: sb.meta,
                alloc: sb.alloc,
                used_blocks: sb.used_blocks,
                inodes: sb.inodes,
                root_hash: sb.root_hash(),
            };
            st.retained.create.push((id, img));
            (id, name)
        };
        self.checkpoint()?;
        Ok((id, name))
    }

    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        {
            let mut st = self.inner.state.write();
            let id = st
                .snapshots
                .iter()
                .find(|(_, s)| s.name == name.as_bytes())
                .map(|(i, _)| *i)
                .ok_or(FsError::NotFound)?;
            if !st.retained.delete.contains(&id) {
                st.retained.delete.push(id);
            }
        }
        self.checkpoint()?;
        Ok(())
    }

    pub fn snapshot_list(&self) -> Vec<SnapshotInfo> {
        self.inner
            .state
            .read()
            .snapshots
            .iter()
            .map(|(id, s)| SnapshotInfo {
                id: *id,
                name: String::from_utf8_lossy(&s.name).into_owned(),
                cp: s.cp,
                created: s.created,
                root_hash: s.root_hash,
            })
            .collect()
    }
}

/// Most snapshots a volume keeps.
pub const MAX_SNAPSHOTS: usize = 256;

fn check_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > items::SNAPSHOT_NAME_MAX
        || name.contains('/')
        || name == "."
        || name == ".."
    {
        return Err(FsError::Invalid(
            "snapshot names are 1 to 64 bytes without '/'",
        ));
    }
    Ok(())
}

pub(super) fn read_snapshots(
    cache: &BlockCache,
    meta: &TreeRoot,
) -> Result<Vec<(u64, RetainedImage)>> {
    let lo = RetainedImage::snapshot_key(0);
    let hi = Key {
        ino: items::VOLUME_INO,
        kind: items::kind::SNAPSHOT + 1,
        off: 0,
    };
    btree::range(cache, meta, lo, hi)
        .map(|item| {
            let (k, v) = item?;
            Ok((k.off, RetainedImage::decode(&v)?))
        })
        .collect()
}
