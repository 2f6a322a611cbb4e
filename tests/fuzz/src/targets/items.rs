//! Metadata items (`fs/src/items.rs`), raw: the first input byte picks the
//! decoder (inode record, directory entry bucket, xattr bucket, snapshot),
//! the rest is the item's value. Checked: what decodes keeps the rules of
//! FORMAT.md that the decoder promises (kinds, lengths, limits) and
//! re-encodes to bytes that decode to the same item.

use twinfs_fs::items::{
    decode_dir_bucket, decode_xattr_bucket, encode_dir_bucket, encode_xattr_bucket, InodeRecord,
    RetainedImage, XattrValue, SNAPSHOT_NAME_MAX, SYMLINK_INLINE_MAX, XATTR_INLINE_MAX,
    XATTR_VALUE_MAX,
};
use twinfs_fs::{FileKind, BLOCK_SIZE};

/// Entry point.
pub fn run(data: &[u8]) {
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(rec) = InodeRecord::decode(value) {
                assert_eq!(rec.attrs.perm & !0o7777, 0);
                if let Some(t) = &rec.attrs.symlink {
                    assert_eq!(rec.attrs.kind, FileKind::Symlink);
                    assert!(!t.is_empty() && t.len() <= SYMLINK_INLINE_MAX);
                }
                assert_eq!(InodeRecord::decode(&rec.encode()).expect("re-encoded"), rec);
            }
        }
        1 => {
            if let Ok(entries) = decode_dir_bucket(value) {
                assert!(entries
                    .iter()
                    .all(|e| !e.name.is_empty() && e.name.len() <= 255));
                let again = decode_dir_bucket(&encode_dir_bucket(&entries)).expect("re-encoded");
                assert_eq!(again, entries);
            }
        }
        2 => {
            if let Ok(entries) = decode_xattr_bucket(value) {
                for e in &entries {
                    assert!(!e.name.is_empty());
                    match &e.value {
                        XattrValue::Inline(v) => assert!(v.len() <= XATTR_INLINE_MAX),
                        XattrValue::Blob { len, blocks } => {
                            assert!(*len as usize <= XATTR_VALUE_MAX);
                            assert_eq!(blocks.len(), (*len as usize).div_ceil(BLOCK_SIZE));
                        }
                    }
                }
                let again =
                    decode_xattr_bucket(&encode_xattr_bucket(&entries)).expect("re-encoded");
                assert_eq!(again, entries);
            }
        }
        _ => {
            if let Ok(snap) = RetainedImage::decode(value) {
                assert!(snap.name.len() <= SNAPSHOT_NAME_MAX);
                assert_eq!(
                    RetainedImage::decode(&snap.encode()).expect("re-encoded"),
                    snap
                );
            }
        }
    }
}
