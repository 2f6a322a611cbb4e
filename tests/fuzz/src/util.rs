//! Helpers the targets share: an async runtime, scratch directories, and a
//! reader that hands out its bytes in small pieces.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

thread_local! {
    /// One single-threaded runtime per thread, reused by every run (building
    /// one per input would dominate the time of the small targets). Its clock
    /// is paused: a receive that would wait forever for bytes that never come
    /// times out at once instead of hanging the fuzzer.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
}

/// Runs `fut` to completion on this thread's runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(fut))
}

thread_local! {
    /// Scratch directories made by earlier runs on this thread, empty, for
    /// reuse: making and removing a directory per run costs the small
    /// file-based targets a good part of their time.
    static SCRATCH_POOL: std::cell::RefCell<Vec<tempfile::TempDir>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty scratch directory, on tmpfs when there is one: the stateful
/// targets (log store, journal, state file) write and fsync files on every
/// run, and tmpfs makes that cheap. Emptied and kept for the next run when
/// dropped (removed when the thread ends).
pub struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("held until dropped").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        let emptied = std::fs::read_dir(dir.path()).is_ok_and(|entries| {
            entries.flatten().all(|e| {
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).is_ok()
                } else {
                    std::fs::remove_file(&p).is_ok()
                }
            })
        });
        if emptied {
            SCRATCH_POOL.with(|pool| pool.borrow_mut().push(dir));
        }
    }
}

/// A scratch directory (see [`Scratch`]).
pub fn scratch_dir() -> Scratch {
    if let Some(dir) = SCRATCH_POOL.with(|pool| pool.borrow_mut().pop()) {
        return Scratch(Some(dir));
    }
    // TWINFS_FUZZ_SCRATCH: where to make them (tests/fuzz.sh gives each run
    // its own, and removes it with whatever the runs left).
    let shm = PathBuf::from("/dev/shm");
    let base = match std::env::var_os("TWINFS_FUZZ_SCRATCH") {
        Some(dir) => PathBuf::from(dir),
        None if shm.is_dir() => shm,
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new()
        .prefix("twinfs-fuzz-")
        .tempdir_in(base)
        .expect("a scratch directory can be created");
    Scratch(Some(dir))
}

/// An `AsyncRead` over a byte slice that returns at most `chunk` bytes per
/// read, so that frames arrive split at every possible point.
pub struct ChunkedReader<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl<'a> ChunkedReader<'a> {
    /// Reads `bytes`, `chunk` (at least 1) at a time.
    pub fn new(bytes: &'a [u8], chunk: usize) -> Self {
        ChunkedReader {
            bytes,
            chunk: chunk.max(1),
        }
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let (head, rest) = self.bytes.split_at(n);
        buf.put_slice(head);
        self.bytes = rest;
        Poll::Ready(Ok(()))
    }
}

/// Little-endian `u64` at `off` of `b` (the caller checked the length).
pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
