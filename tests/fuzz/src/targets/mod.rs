//! The fuzz targets, one module each; `run(data)` is the entry point.

pub mod blocks;
pub mod btree;
pub mod control;
pub mod cp_apply;
pub mod filetree;
pub mod frame;
pub mod handshake_msg;
pub mod handshake_server;
pub mod items;
pub mod keys;
pub mod lineage;
pub mod lz4;
pub mod message;
pub mod message_arb;
pub mod nvlog_batch;
pub mod nvlog_record;
pub mod nvlog_scan;
pub mod peer_journal;
pub mod peer_logstore;
pub mod peer_state;
pub mod peer_status;
pub mod relay_control;
pub mod session;
pub mod superblock;
