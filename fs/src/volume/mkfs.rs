//! mkfs: writing a new, empty volume (CP 0 with an empty root directory).

use super::*;

fn random_uuid() -> [u8; 16] {
    use std::io::Read;
    let mut u = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u = *blake3::hash(&t.as_nanos().to_le_bytes())
            .as_bytes()
            .first_chunk()
            .expect("16 bytes");
    }
    u
}

/// Default log size for a volume of `total` blocks.
pub fn default_log_blocks(total: u64) -> u64 {
    (total / 8).clamp(MIN_LOG_BLOCKS, MAX_DEFAULT_LOG_BLOCKS)
}

/// Smallest volume mkfs accepts, in bytes.
pub fn min_volume_bytes() -> u64 {
    (2 + MIN_LOG_BLOCKS + 256) * BLOCK_SIZE_U64
}

/// Writes a new, empty volume onto `dev`: CP 0 with an empty root directory.
pub fn mkfs(dev: Arc<dyn BlockDevice>, opts: &MkfsOptions) -> Result<Superblock> {
    let total = dev.num_blocks();
    let log_blocks = opts.log_blocks.unwrap_or_else(|| default_log_blocks(total));
    if log_blocks < MIN_LOG_BLOCKS || 2 + log_blocks + 256 > total {
        return Err(FsError::Invalid(
            "the device is too small for a twinfs volume (at least 12 MiB)",
        ));
    }
    if total > superblock::MAX_VOLUME_BLOCKS {
        return Err(FsError::Invalid(
            "the device is larger than twinfs supports (4 PiB)",
        ));
    }
    let uuid = opts.uuid.unwrap_or_else(random_uuid);
    let time = opts
        .time
        .unwrap_or_else(|| Timestamp::from_system_time(std::time::SystemTime::now()));
    let data_start = 2 + log_blocks;
    let cache = BlockCache::new(dev.clone(), 64, 64);
    let mut alloc = Allocator::new(
        total,
        data_start,
        data_start,
        alloc::Bitmap::new(total),
        Default::default(),
    );
    let root = InodeAttrs {
        kind: FileKind::Directory,
        perm: 0o755,
        uid: opts.root_uid,
        gid: opts.root_gid,
        nlink: 2,
        size: 0,
        rdev: 0,
        parent: ROOT_INO,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        symlink: None,
    };
    let rec = InodeRecord {
        attrs: root,
        data: TreeRoot::default(),
    };
    let mut w = CpWriter::new(&cache, &*dev, &mut alloc, CpNumber(0), None);
    let meta = btree::apply(
        &mut w,
        &TreeRoot::default(),
        &[(InodeRecord::key(ROOT_INO), Some(rec.encode()))],
    )?;
    w.finish()?;
    drop(w);
    let (map_writes, map_holes) = alloc.take_dirty();
    let mut w = CpWriter::new(&cache, &*dev, &mut alloc, CpNumber(0), None);
    // The map tree's blocks live outside the map (see alloc).
    let alloc_root = mkfs_map(&mut w, &map_writes, &map_holes)?;
    drop(w);
    let generation = opts
        .generation
        .unwrap_or_else(lineage::random_generation_id);
    let sb = Superblock {
        alloc_cursor: alloc.cursor(),
        used_blocks: alloc.used_blocks(),
        inodes: 1,
        meta,
        alloc: alloc_root,
        cp_time: time,
        ..Superblock::empty(uuid, total, log_blocks, generation)
    };
    // Wipe the other slot and the head of the log so that nothing of an
    // earlier volume on this device can be mistaken for ours.
    let zero = vec![0u8; BLOCK_SIZE];
    let io = |e| FsError::io("writing the new volume", e);
    dev.write(BlockAddr(1), &zero).map_err(io)?;
    dev.write(BlockAddr(2), &zero).map_err(io)?;
    dev.flush().map_err(io)?;
    dev.write(BlockAddr(0), &sb.encode()[..]).map_err(io)?;
    dev.flush().map_err(io)?;
    Ok(sb)
}

fn mkfs_map(
    w: &mut CpWriter<'_>,
    writes: &std::collections::BTreeMap<u64, filetree::DirtyBlock>,
    holes: &crate::rangeset::RangeSet,
) -> Result<TreeRoot> {
    w.set_map_mode(true);
    let root = filetree::apply(w, &TreeRoot::default(), writes, holes)?;
    w.finish()?;
    Ok(root)
}
