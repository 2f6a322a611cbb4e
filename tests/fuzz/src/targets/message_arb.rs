//! Structure-aware messages: a `Message` built from the input (see
//! [`crate::arb`]), valid or one step past a limit, is encoded; the encoding
//! must decode to the same message exactly when it validates, and be refused
//! as `Limit` otherwise. Then the rest of the input flips bits in the
//! encoding and cuts it, and the damaged bytes go through the raw checks of
//! [`super::message`].

use arbitrary::Unstructured;
use twinfs_replicate::{Direction, FrameFault, Message};

use crate::arb;

/// Most damaging steps applied to one encoding.
const MAX_DAMAGE: usize = 16;

/// Entry point.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(msg) = arb::message(&mut u) else {
        return;
    };
    let encoded = msg.encode().expect("every message encodes");
    match (msg.validate(), Message::decode(&encoded)) {
        (Ok(()), Ok(decoded)) => assert_eq!(decoded, msg),
        (Err(rule), Err(FrameFault::Limit(reported))) => assert_eq!(rule, reported),
        (valid, decoded) => panic!("validate says {valid:?}, decode says {decoded:?}"),
    }
    // Every message travels one way or both, never neither.
    assert!(msg.may_travel(Direction::SourceToPeer) || msg.may_travel(Direction::PeerToSource));

    let mut damaged = encoded;
    // An exhausted `Unstructured` keeps answering zeros: stop when it is empty.
    for _ in 0..MAX_DAMAGE {
        if u.is_empty() {
            break;
        }
        let Ok(op) = u.int_in_range(0u8..=2) else {
            break;
        };
        match op {
            0 if !damaged.is_empty() => {
                let Ok(at) = u.choose_index(damaged.len()) else {
                    break;
                };
                let bit: u8 = u.int_in_range(0..=7).unwrap_or(0);
                damaged[at] ^= 1 << bit;
            }
            1 if !damaged.is_empty() => {
                let Ok(at) = u.choose_index(damaged.len()) else {
                    break;
                };
                damaged.truncate(at);
            }
            _ => {
                let Ok(b) = u.arbitrary::<u8>() else {
                    break;
                };
                damaged.push(b);
            }
        }
    }
    super::message::check(&damaged);
}
