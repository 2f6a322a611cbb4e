//! twinfs-replicate: mirroring of a twinfs volume to a peer.
