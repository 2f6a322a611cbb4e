//! The peer's `status.json` (`PeerStatus`, as `twinfs status --dir` reads
//! it) and the log store's quick count of a segment (`quick_count`, what
//! status shows while the daemon is down), raw bytes. Checked: a status
//! that parses serializes and parses back equal; the quick count never
//! counts more bytes than the file holds or more records than fit in it.

use twinfs_replicate::peer::logstore::{quick_count, RECORD_HEADER_BYTES};
use twinfs_replicate::peer::status::{read_status_file, PeerStatus};
use twinfs_replicate::peer::STATUS_FILE;

use crate::util::scratch_dir;

/// Entry point.
pub fn run(data: &[u8]) {
    if let Ok(status) = serde_json::from_slice::<PeerStatus>(data) {
        let again: PeerStatus =
            serde_json::from_str(&status.to_json()).expect("status JSON parses");
        assert_eq!(again, status);
    }
    let dir = scratch_dir();
    std::fs::write(dir.path().join(STATUS_FILE), data).expect("status written");
    let from_file = read_status_file(dir.path());
    assert_eq!(from_file, serde_json::from_slice::<PeerStatus>(data).ok());

    std::fs::write(dir.path().join("00000000000000000001.seg"), data).expect("segment written");
    let count = quick_count(dir.path());
    assert_eq!(count.bytes, data.len() as u64);
    assert!(count.transfers <= (data.len() / RECORD_HEADER_BYTES) as u64);
}
