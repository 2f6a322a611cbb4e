//! The peer's state file `DIR/state` (`PeerState::load`), raw bytes written
//! as the file. Checked: loading fails with an error or gives a state that
//! `store` writes and `load` reads back equal; a file over the size limit
//! is refused.

use twinfs_replicate::peer::state::PeerState;
use twinfs_replicate::peer::STATE_FILE;

use crate::util::scratch_dir;

/// Entry point.
pub fn run(data: &[u8]) {
    let dir = scratch_dir();
    std::fs::write(dir.path().join(STATE_FILE), data).expect("state written");
    let Ok(state) = PeerState::load(dir.path()) else {
        return;
    };
    assert!(
        data.len() <= 64 * 1024,
        "a state file over the limit was read"
    );
    let other = scratch_dir();
    state.store(other.path()).expect("store on tmpfs");
    assert_eq!(PeerState::load(other.path()).expect("reload"), state);
}
