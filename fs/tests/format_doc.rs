//! `fs/FORMAT.md` states the on-disk format; these tests hold it to the code:
//! every offset table is compared byte by byte with what the encoders write,
//! every size with an encoded length, every limit with its constant.

use std::collections::HashMap;

use twinfs_fs::alloc::BITS_PER_BLOCK;
use twinfs_fs::btree::{TreeRoot, MAX_VALUE_SIZE};
use twinfs_fs::filetree::{FANOUT, MAX_HEIGHT};
use twinfs_fs::items::{self, *};
use twinfs_fs::lineage::{GenerationId, Lineage};
use twinfs_fs::nvlog::batch::{self, OpenBatch, BATCH_HEADER_SIZE, MAX_BATCH_BLOCKS};
use twinfs_fs::nvlog::record::{self, Create, Record, SetAttr, Write, WRITE_FIXED};
use twinfs_fs::superblock::{self, LogPosition, PeerHold, Superblock};
use twinfs_fs::volume::{MAX_SNAPSHOTS, MIN_LOG_BLOCKS};
use twinfs_fs::*;

const DOC: &str = include_str!("../FORMAT.md");

/// The text of the section whose heading line is exactly `heading`, up to
/// the next heading.
fn section(heading: &str) -> &'static str {
    let start = DOC
        .lines()
        .position(|l| l == heading)
        .unwrap_or_else(|| panic!("FORMAT.md has no heading {heading:?}"));
    let rest: Vec<&str> = DOC.lines().skip(start + 1).collect();
    let len = rest
        .iter()
        .position(|l| l.starts_with('#'))
        .unwrap_or(rest.len());
    let first = DOC.lines().nth(start + 1).unwrap_or("");
    let at = DOC
        .find(&format!("{heading}\n{first}"))
        .expect("section start")
        + heading.len()
        + 1;
    let text: usize = rest[..len].iter().map(|l| l.len() + 1).sum();
    &DOC[at..(at + text).min(DOC.len())]
}

/// Rows `offset size name` of the first offset table in a section.
fn offset_table(heading: &str) -> Vec<(usize, usize, String)> {
    let mut rows = Vec::new();
    for line in section(heading).lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if let [off, size, name, ..] = t[..] {
            if let (Ok(off), Ok(size)) = (off.parse(), size.parse()) {
                rows.push((off, size, name.to_string()));
            }
        }
    }
    assert!(!rows.is_empty(), "no offset table under {heading:?}");
    rows
}

/// Rows `size name` of the size tables in a section (sizes may be symbolic).
fn size_table(heading: &str) -> HashMap<String, String> {
    section(heading)
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            match t[..] {
                [size, name, ..]
                    if size.starts_with(|c: char| c.is_ascii_digit())
                        || size == "n"
                        || size == "len" =>
                {
                    Some((name.to_string(), size.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

fn num(rows: &HashMap<String, String>, field: &str) -> usize {
    rows.get(field)
        .unwrap_or_else(|| panic!("no row {field}"))
        .parse()
        .unwrap_or_else(|_| panic!("row {field} has no number"))
}

fn ptr(addr: u64, birth: u64, fill: u8) -> BlockPtr {
    BlockPtr {
        addr: BlockAddr(addr),
        birth: CpNumber(birth),
        hash: Hash128([fill; 16]),
    }
}

fn ptr_bytes(p: &BlockPtr) -> Vec<u8> {
    let mut b = vec![0; BlockPtr::SIZE];
    p.encode(&mut b);
    b
}

fn ts_bytes(t: Timestamp) -> Vec<u8> {
    let mut b = vec![0; Timestamp::SIZE];
    t.encode(&mut b);
    b
}

/// Checks an offset table against `bytes`: rows are contiguous from 0, end
/// at `end`, and each field holds `expect[name]` ("zero" rows hold zeros).
fn check_table(heading: &str, bytes: &[u8], end: usize, expect: &HashMap<&str, Vec<u8>>) {
    let rows = offset_table(heading);
    let mut at = 0;
    for (off, size, name) in &rows {
        assert_eq!(*off, at, "{heading}: {name} should start at {at}");
        let got = &bytes[*off..off + size];
        if name == "zero" {
            assert!(
                got.iter().all(|&b| b == 0),
                "{heading}: bytes {off}.. not zero"
            );
        } else {
            let want = expect
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{heading}: the test knows no field {name}"));
            assert_eq!(got, &want[..], "{heading}: field {name} at {off}");
        }
        at = off + size;
    }
    assert_eq!(
        at, end,
        "{heading}: the table ends at {at}, the encoding at {end}"
    );
}

fn sample_superblock(hold: bool) -> Superblock {
    let base = sample_base();
    Superblock {
        cp: CpNumber(0x33),
        peer_hold: hold.then(|| PeerHold::of(&base, 0x1234_5678_9abc_def0)),
        replica: true,
        ..base
    }
}

/// The CP a sample superblock holds for the peer.
fn sample_base() -> Superblock {
    Superblock {
        uuid: [0x11; 16],
        total_blocks: 0x2222,
        log_start: 2,
        log_blocks: 0x1000,
        cp: CpNumber(0x33),
        next_ino: Ino(0x44),
        alloc_cursor: 0x1555,
        used_blocks: 0x66,
        inodes: 0x77,
        meta: TreeRoot {
            ptr: ptr(0x1888, 0x30, 0x88),
            height: 3,
        },
        alloc: TreeRoot {
            ptr: ptr(0x1999, 0x31, 0x99),
            height: 2,
        },
        log: LogPosition {
            next_transfer: TransferId(0xaa),
            replay_offset: 0xbb,
            last_batch_hash: [0xcc; 32],
        },
        cp_time: Timestamp::new(0xdd, 0xee),
        peer_hold: None,
        lineage: Lineage::start(GenerationId(0xa1))
            .begin(GenerationId(0xb2), CpNumber(0x10))
            .begin(GenerationId(0xc3), CpNumber(0x31)),
        replica: false,
    }
}

#[test]
fn the_superblock_table_is_what_encode_writes() {
    for hold in [true, false] {
        let sb = sample_superblock(hold);
        let b = sb.encode();
        let u64s = |v: u64| v.to_le_bytes().to_vec();
        let h = sb.peer_hold.unwrap_or(PeerHold {
            cp: CpNumber(u64::MAX),
            meta: TreeRoot::default(),
            alloc: TreeRoot::default(),
            root_hash: RootHash([0; 32]),
            peer_id: 0,
            image: None,
        });
        let hold_image = match sb.held_superblock() {
            Some(held) => held.encode()[16..236].to_vec(),
            None => vec![0; 220],
        };
        let mut lineage = vec![0u8; 2048];
        for (i, g) in sb.lineage.generations().iter().enumerate() {
            lineage[i * 16..i * 16 + 8].copy_from_slice(&g.id.0.to_le_bytes());
            lineage[i * 16 + 8..i * 16 + 16].copy_from_slice(&g.first_cp.0.to_le_bytes());
        }
        let expect: HashMap<&str, Vec<u8>> = HashMap::from([
            ("magic", b"TWINFS\0\x01".to_vec()),
            ("version", 2u32.to_le_bytes().to_vec()),
            ("block_size", 4096u32.to_le_bytes().to_vec()),
            ("uuid", sb.uuid.to_vec()),
            ("total_blocks", u64s(sb.total_blocks)),
            ("log_start", u64s(2)),
            ("log_blocks", u64s(sb.log_blocks)),
            ("cp", u64s(sb.cp.0)),
            ("next_ino", u64s(sb.next_ino.0)),
            ("alloc_cursor", u64s(sb.alloc_cursor)),
            ("used_blocks", u64s(sb.used_blocks)),
            ("inodes", u64s(sb.inodes)),
            ("meta_root", ptr_bytes(&sb.meta.ptr)),
            ("meta_height", vec![sb.meta.height]),
            ("alloc_root", ptr_bytes(&sb.alloc.ptr)),
            ("alloc_height", vec![sb.alloc.height]),
            ("next_transfer", u64s(sb.log.next_transfer.0)),
            ("replay_offset", u64s(sb.log.replay_offset)),
            ("last_batch_hash", sb.log.last_batch_hash.to_vec()),
            ("cp_time", ts_bytes(sb.cp_time)),
            ("hold_cp", u64s(h.cp.0)),
            ("hold_meta_root", ptr_bytes(&h.meta.ptr)),
            ("hold_meta_height", vec![h.meta.height]),
            ("hold_alloc_root", ptr_bytes(&h.alloc.ptr)),
            ("hold_alloc_height", vec![h.alloc.height]),
            ("hold_root_hash", h.root_hash.0.to_vec()),
            ("flags", 1u32.to_le_bytes().to_vec()),
            ("generations", 3u32.to_le_bytes().to_vec()),
            ("hold_peer", u64s(h.peer_id)),
            ("hold_image", hold_image),
            ("lineage", lineage),
            ("checksum", blake3::hash(&b[..4064]).as_bytes().to_vec()),
        ]);
        check_table("## Superblock", &b[..], BLOCK_SIZE, &expect);
        assert_eq!(Superblock::decode(&b, 1).unwrap(), sb);
    }
    let rows = offset_table("## Superblock");
    let at = |name: &str| rows.iter().find(|r| r.2 == name).expect(name).0;
    assert_eq!(superblock::BODY_START, at("uuid"));
    assert_eq!(superblock::BODY_END, at("next_transfer"));
    assert_eq!(superblock::OFF_CHECKSUM, at("checksum"));
    let text = section("## Superblock");
    assert!(text.contains(&format!(
        "bytes {} to {}",
        superblock::BODY_START,
        superblock::BODY_END
    )));
    assert!(text.contains(&format!("fields end at {}", superblock::FIELDS_END)));
    let sb = sample_superblock(false);
    assert_eq!(
        sb.root_hash().0,
        *blake3::hash(&sb.encode()[superblock::BODY_START..superblock::BODY_END]).as_bytes()
    );
}

#[test]
fn the_block_pointer_table_is_what_encode_writes() {
    let p = ptr(0x0102_0304, 0x0506, 0x77);
    let expect = HashMap::from([
        ("addr", p.addr.0.to_le_bytes().to_vec()),
        ("birth", p.birth.0.to_le_bytes().to_vec()),
        ("hash", p.hash.0.to_vec()),
    ]);
    check_table(
        "## Block pointer (32 bytes)",
        &ptr_bytes(&p),
        BlockPtr::SIZE,
        &expect,
    );
}

#[test]
fn the_batch_header_table_is_what_seal_writes() {
    let mut b = OpenBatch::new(TransferId(0x55));
    b.append(&Record::Reclaim { ino: Ino(9) });
    let sealed = b.seal(&[0x12; 16], [0x34; 32]);
    let header = batch::parse_header(&sealed.bytes).unwrap();
    let u32s = |v: u32| v.to_le_bytes().to_vec();
    let expect = HashMap::from([
        ("magic", b"TWNVLOG1".to_vec()),
        ("uuid", vec![0x12; 16]),
        ("id", 0x55u64.to_le_bytes().to_vec()),
        ("prev_hash", vec![0x34; 32]),
        ("records_len", u32s(9)),
        ("nrecords", u32s(1)),
        ("nblocks", u32s(0)),
        ("header_blocks", u32s(1)),
        ("checksum", sealed.hash.to_vec()),
    ]);
    check_table("### Batch", &sealed.bytes, BATCH_HEADER_SIZE, &expect);
    assert_eq!(header.checksum, sealed.hash);
    let text = section("### Batch");
    assert!(text.contains(&format!("BATCH_HEADER_SIZE = {BATCH_HEADER_SIZE}")));
    assert!(text.contains(&format!("MAX_BATCH_BLOCKS` = {MAX_BATCH_BLOCKS}")));
    assert!(text.contains(&format!("<= {} MiB", batch::MAX_RECORDS_BYTES >> 20)));
}

#[test]
fn the_inode_record_table_is_what_encode_writes() {
    let target = b"../a/target".to_vec();
    let rec = InodeRecord {
        attrs: InodeAttrs {
            kind: FileKind::Symlink,
            perm: 0o1755,
            uid: 0x0101,
            gid: 0x0202,
            nlink: 3,
            size: target.len() as u64,
            rdev: 0x0404,
            parent: Ino(0x0505),
            blocks: 0x0606,
            atime: Timestamp::new(1, 2),
            mtime: Timestamp::new(3, 4),
            ctime: Timestamp::new(5, 6),
            crtime: Timestamp::new(-7, 8),
            symlink: Some(target.clone().into()),
        },
        data: TreeRoot {
            ptr: ptr(0x0909, 0x0a, 0x0b),
            height: 2,
        },
    };
    let enc = rec.encode();
    let a = &rec.attrs;
    let u32s = |v: u32| v.to_le_bytes().to_vec();
    let u64s = |v: u64| v.to_le_bytes().to_vec();
    let expect = HashMap::from([
        ("kind", vec![3]),
        ("perm", u32s(a.perm)),
        ("uid", u32s(a.uid)),
        ("gid", u32s(a.gid)),
        ("nlink", u32s(a.nlink)),
        ("size", u64s(a.size)),
        ("rdev", u64s(a.rdev)),
        ("parent", u64s(a.parent.0)),
        ("blocks", u64s(a.blocks)),
        ("atime", ts_bytes(a.atime)),
        ("mtime", ts_bytes(a.mtime)),
        ("ctime", ts_bytes(a.ctime)),
        ("crtime", ts_bytes(a.crtime)),
        ("data_root", ptr_bytes(&rec.data.ptr)),
        ("data_height", vec![2]),
        ("target_len", (target.len() as u16).to_le_bytes().to_vec()),
    ]);
    let heading = "### Inode record (135 bytes + inline target)";
    check_table(heading, &enc, 135, &expect);
    assert_eq!(&enc[135..], &target[..]);
    assert!(section(heading).contains(&format!("<= {SYMLINK_INLINE_MAX}")));
    assert!(section(heading).contains(&format!(
        "{} to {SYMLINK_MAX} bytes",
        SYMLINK_INLINE_MAX + 1
    )));
}

#[test]
fn bucket_and_snapshot_sizes_are_what_encode_writes() {
    let dir = size_table("### Directory entry bucket (2 bytes + entries)");
    let entry = DirEntry {
        name: b"abc".to_vec(),
        ino: Ino(5),
        kind: FileKind::Fifo,
    };
    let one = num(&dir, "count") + num(&dir, "name_len") + 3 + num(&dir, "ino") + num(&dir, "kind");
    assert_eq!(encode_dir_bucket(&[entry]).len(), one);

    let x = size_table("### Xattr bucket (2 bytes + entries)");
    let head = num(&x, "count") + num(&x, "name_len") + 2 + num(&x, "where") + num(&x, "len");
    let inline = XattrEntry {
        name: b"ab".to_vec(),
        value: XattrValue::Inline(vec![1; 100]),
    };
    assert_eq!(encode_xattr_bucket(&[inline]).len(), head + 100);
    let blob = XattrEntry {
        name: b"ab".to_vec(),
        value: XattrValue::Blob {
            len: 5000,
            blocks: vec![ptr(100, 1, 1), ptr(101, 1, 2)],
        },
    };
    assert_eq!(x["blocks"], "32×k");
    assert_eq!(
        encode_xattr_bucket(&[blob]).len(),
        head + num(&x, "nblocks") + 2 * BlockPtr::SIZE
    );
    let text = section("### Xattr bucket (2 bytes + entries)");
    assert!(text.contains(&format!("<= {XATTR_INLINE_MAX} (XATTR_INLINE_MAX)")));
    assert!(text.contains(&format!("{}..={XATTR_VALUE_MAX}", XATTR_INLINE_MAX + 1)));

    let heading = "### Retained image: snapshot (135 bytes + name)";
    let s = size_table(heading);
    let fixed: usize = s.values().filter_map(|v| v.parse::<usize>().ok()).sum();
    assert_eq!(fixed, 135);
    let img = RetainedImage {
        name: b"daily".to_vec(),
        cp: CpNumber(4),
        created: Timestamp::new(1, 1),
        meta: TreeRoot::default(),
        alloc: TreeRoot::default(),
        used_blocks: 1,
        inodes: 1,
        root_hash: RootHash([1; 32]),
    };
    assert_eq!(img.encode().len(), fixed + 5);
    assert!(section(heading).contains(&format!("<= {SNAPSHOT_NAME_MAX}")));
    assert!(section(heading).contains(&format!("At most {MAX_SNAPSHOTS} snapshots")));
}

#[test]
fn item_kinds_and_the_name_hash_are_as_documented() {
    let text = section("## Metadata items");
    for (k, name) in [
        (kind::INODE, "INODE"),
        (kind::XATTR, "XATTR"),
        (kind::DIRENT, "DIRENT"),
        (kind::ORPHAN, "ORPHAN"),
        (kind::SNAPSHOT, "SNAPSHOT"),
    ] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert_eq!(row.split_whitespace().next(), Some(k.to_string().as_str()));
    }
    assert!(text.contains(&format!("`MAX_VALUE_SIZE` = {MAX_VALUE_SIZE}")));
    // The key derivation's context string, quoted in the doc.
    let context = text
        .split("blake3_derive_key(\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the name hash's context string");
    let uuid = [9u8; 16];
    assert_eq!(name_hash_key(&uuid), blake3::derive_key(context, &uuid));
    let key = name_hash_key(&uuid);
    let full = blake3::keyed_hash(&key, b"name");
    let first8 = u64::from_le_bytes(full.as_bytes()[..8].try_into().unwrap());
    assert_eq!(items::name_hash(&key, b"name"), (first8 >> 1).max(3));
}

#[test]
fn record_sizes_are_as_documented() {
    let text = section("### Records");
    let header = text
        .lines()
        .find(|l| l.starts_with("tag"))
        .expect("records table");
    let col = header.find("fixed size").expect("fixed size column");
    let mut fixed = HashMap::new();
    for line in text.lines() {
        let Some(tag) = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u8>().ok())
        else {
            continue;
        };
        let size: usize = line[col..]
            .split_whitespace()
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no size for tag {tag}"));
        fixed.insert(tag, size);
    }
    let t = Timestamp::new(1, 2);
    let records = [
        Record::Create(Create {
            parent: Ino(1),
            name: vec![],
            ino: Ino(2),
            kind: FileKind::Regular,
            perm: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            time: t,
            target: vec![],
        }),
        Record::Link {
            ino: Ino(2),
            parent: Ino(1),
            name: vec![],
            time: t,
        },
        Record::Unlink {
            parent: Ino(1),
            name: vec![],
            dir: false,
            time: t,
        },
        Record::Rename {
            parent: Ino(1),
            name: vec![],
            new_parent: Ino(1),
            new_name: vec![],
            flags: record::RENAME_NOREPLACE,
            time: t,
        },
        Record::SetAttr(SetAttr::default()),
        Record::Write(Write {
            ino: Ino(2),
            offset: 0,
            time: t,
            kill_suid: false,
            head: vec![],
            blocks: vec![],
            hashes: vec![],
            tail: vec![],
        }),
        Record::Fallocate {
            ino: Ino(2),
            offset: 0,
            len: 1,
            mode: 0,
            time: t,
        },
        Record::SetXattr {
            ino: Ino(2),
            name: vec![],
            value: vec![],
            flags: 0,
            time: t,
        },
        Record::RemoveXattr {
            ino: Ino(2),
            name: vec![],
            time: t,
        },
        Record::Reclaim { ino: Ino(2) },
    ];
    assert_eq!(fixed.len(), records.len());
    for r in &records {
        let mut out = Vec::new();
        r.encode(0, &mut out);
        let tag = out[0];
        assert_eq!(out.len(), fixed[&tag], "record tag {tag} ({r:?})");
    }
    assert_eq!(fixed[&6], WRITE_FIXED);
}

#[test]
fn limits_and_geometry_are_as_documented() {
    let facts = [
        (
            "## Image layout",
            format!("`MIN_LOG_BLOCKS` = {MIN_LOG_BLOCKS}"),
        ),
        ("## File trees", format!("`FANOUT` = {FANOUT}")),
        ("## File trees", format!("`MAX_HEIGHT` = {MAX_HEIGHT}")),
        (
            "## File trees",
            format!("{FANOUT} × {} = 4096", BlockPtr::SIZE),
        ),
        (
            "## File trees",
            format!("2^{} blocks", 7 * u32::from(MAX_HEIGHT)),
        ),
        ("## Allocation map", format!("k × {BITS_PER_BLOCK} + i")),
        (
            "## Superblock",
            format!("<= {}", twinfs_fs::btree::MAX_LEVEL),
        ),
        ("## Superblock", format!("<= {MAX_HEIGHT}")),
    ];
    for (heading, fact) in facts {
        assert!(
            section(heading).contains(&fact),
            "FORMAT.md {heading:?} does not state {fact:?}"
        );
    }
    assert_eq!(FANOUT as usize * BlockPtr::SIZE, BLOCK_SIZE);
}
