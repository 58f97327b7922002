//! Appending a request body to an upload's data file, on a fixed pool of threads.
//!
//! A body arrives on the async side and is cut into batches ([`BATCH_BYTES`] or
//! [`BATCH_FRAMES`], whichever comes first). Only a whole batch (or the end of the body)
//! goes to a [`WriterPool`] thread, which writes it (and, beside it, another hashes it):
//! a thread is held while the disk is written, never while a client is slow to send.
//! The pool is the uploads' own, so reads, which use tokio's blocking threads, never
//! queue behind them.
//!
//! By default bodies go through the page cache: a batch's frames (reference-counted, not
//! copied) are handed to the kernel in one `writev`, and writeback is started every
//! 8 MiB so the fsync at completion waits only for the tail. A freshly pushed blob is
//! then in memory for the pulls that usually follow. Each batch's blocks are reserved
//! just before it is written (`fallocate` KEEP_SIZE, exactly the batch): the filesystem
//! allocates whole extents instead of block by block at writeback, and an upload never
//! holds a block it has not received (a client that stalls holds nothing ahead of its
//! data). A reservation that fails part-way (ENOSPC) is released at once, and whatever
//! is reserved past the data when the appender is dropped is released then. Not on
//! tmpfs, where reserving means zeroing pages the body overwrites, and not with direct
//! writes.
//!
//! With `storage.filesystem.directwrites: true`, bodies bypass the page cache: bytes
//! collect in an aligned 4 MiB buffer that is written with `O_DIRECT` once full. A push
//! then costs one user-space copy and the device's write speed, leaves no dirty pages
//! behind (no writeback bursts under other requests) and evicts nothing, but the blob's
//! first pull reads it from the device. The bytes that are not a whole aligned block
//! (the head up to the first boundary, the tail after the last one) go through the page
//! cache, as everything does when the filesystem refuses `O_DIRECT`.
//!
//! The appender only writes; the caller fsyncs at completion and truncates back to the
//! starting size when a write fails.

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;

/// Offsets and lengths of direct writes are multiples of this (the page size, which
/// covers every logical block size a Linux filesystem uses for regular files).
const ALIGN: usize = 4096;
/// Size of one direct write, and of the aligned buffer.
const DIRECT_CHUNK: usize = 4 << 20;
/// Bytes of one batch: one buffered `writev`, one hop to a pool thread.
pub(crate) const BATCH_BYTES: usize = 1 << 20;
/// Frames of one batch, whatever their size (below `IOV_MAX`).
pub(crate) const BATCH_FRAMES: usize = 256;
/// Bytes written through the page cache between two writeback kicks.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// A heap buffer whose usable part starts at an `ALIGN`-aligned address.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(capacity: usize) -> AlignedBuf {
        let raw = vec![0u8; capacity + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - ALIGN
    }

    fn filled(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Copies as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity() - self.len);
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// Appends to one file from a starting offset; see the module docs.
pub(crate) struct Appender {
    plain: File,
    /// File offset of the next byte to hand to the kernel (the first queued or
    /// buffered one).
    offset: u64,
    written: u64,
    mode: Mode,
}

enum Mode {
    /// Through the page cache, one `writev` per batch.
    Buffered {
        /// Bytes written but not yet handed to writeback.
        unkicked: u64,
        /// Blocks are reserved before each batch (not on tmpfs; off after a failure).
        reserving: bool,
        /// Blocks may be allocated up to here (past `offset` only while a batch is
        /// being written, or after a reservation failed part-way).
        reserved: u64,
    },
    /// Around the page cache, with the same file opened `O_DIRECT`.
    Direct {
        file: File,
        /// Bytes to write through the page cache before direct writes are aligned.
        head: usize,
        /// Bytes collect here until a whole aligned chunk is ready.
        buf: AlignedBuf,
    },
}

impl Appender {
    /// Opens `path` to append at `offset` (its current size).
    pub(crate) fn open(path: &Path, offset: u64, direct_writes: bool) -> io::Result<Appender> {
        let mut plain = std::fs::OpenOptions::new().write(true).open(path)?;
        let direct = if direct_writes {
            // EINVAL: the filesystem does not do O_DIRECT (tmpfs before Linux 6.6, some
            // FUSE mounts). Buffered writes are always correct, so fall back to them.
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let mode = match direct {
            Some(file) => Mode::Direct {
                file,
                head: (ALIGN - (offset % ALIGN as u64) as usize) % ALIGN,
                buf: AlignedBuf::new(DIRECT_CHUNK),
            },
            None => {
                // Buffered writes go out with `writev` at the file position.
                plain.seek(SeekFrom::Start(offset))?;
                Mode::Buffered {
                    unkicked: 0,
                    reserving: !on_tmpfs(&plain),
                    reserved: offset,
                }
            }
        };
        Ok(Appender {
            plain,
            offset,
            written: 0,
            mode,
        })
    }

    /// Appends one frame of a request body.
    #[cfg(test)]
    pub(crate) fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.write_batch(&[data])
    }

    /// Appends a batch of frames: buffered, one `writev` (more only when the kernel
    /// takes part of them) after reserving exactly its blocks; direct, through the
    /// aligned buffer.
    pub(crate) fn write_batch(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let len: u64 = frames.iter().map(|b| b.len() as u64).sum();
        self.written += len;
        match &mut self.mode {
            Mode::Buffered {
                unkicked,
                reserving,
                reserved,
            } => {
                let end = self.offset + len;
                if *reserving && len > 0 {
                    // Whatever happens, blocks may now be allocated up to `end`.
                    *reserved = (*reserved).max(end);
                    if !reserve(&self.plain, self.offset, len) {
                        // Not supported here, or no room (ENOSPC after allocating part
                        // of the range): give back what it took now, and write without.
                        *reserving = false;
                        release_past(&self.plain, self.offset);
                        *reserved = self.offset;
                    }
                }
                for group in frames.chunks(1024) {
                    let mut slices: Vec<IoSlice<'_>> = group
                        .iter()
                        .filter(|b| !b.is_empty())
                        .map(|b| IoSlice::new(b))
                        .collect();
                    let mut rest = &mut slices[..];
                    while !rest.is_empty() {
                        match self.plain.write_vectored(rest) {
                            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                            Ok(n) => {
                                self.offset += n as u64;
                                *unkicked += n as u64;
                                IoSlice::advance_slices(&mut rest, n);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                if *unkicked >= WRITEBACK_EVERY {
                    start_writeback(&self.plain, self.offset - *unkicked, *unkicked);
                    *unkicked = 0;
                }
                Ok(())
            }
            Mode::Direct { file, head, buf } => {
                for data in frames {
                    let mut data = &data[..];
                    if *head > 0 {
                        let n = (*head).min(data.len());
                        self.plain.write_all_at(&data[..n], self.offset)?;
                        self.offset += n as u64;
                        *head -= n;
                        data = &data[n..];
                    }
                    while !data.is_empty() {
                        let n = buf.fill(data);
                        data = &data[n..];
                        if buf.len == buf.capacity() {
                            file.write_all_at(buf.filled(), self.offset)?;
                            self.offset += buf.len as u64;
                            buf.len = 0;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes what is queued or buffered; returns the bytes appended in all.
    #[cfg(test)]
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.finish_in_place()
    }

    /// [`Appender::finish`] without giving the appender up (it is dropped later, with
    /// what it owns beside it).
    pub(crate) fn finish_in_place(&mut self) -> io::Result<u64> {
        match &mut self.mode {
            Mode::Buffered { .. } => {}
            Mode::Direct { file, buf, .. } => {
                // The aligned part directly, the tail through the page cache.
                let len = buf.len;
                let aligned = len - len % ALIGN;
                if aligned > 0 {
                    file.write_all_at(&buf.filled()[..aligned], self.offset)?;
                }
                if len > aligned {
                    self.plain
                        .write_all_at(&buf.filled()[aligned..len], self.offset + aligned as u64)?;
                }
                self.offset += len as u64;
                buf.len = 0;
            }
        }
        Ok(self.written)
    }
}

/// A write that failed part-way leaves no reserved blocks past what it wrote: they are
/// released here, whether the body finished or not.
impl Drop for Appender {
    fn drop(&mut self) {
        if let Mode::Buffered { reserved, .. } = &self.mode
            && *reserved > self.offset
        {
            release_past(&self.plain, self.offset);
        }
    }
}

/// Frees the blocks allocated past `size`, the file's size: a truncate to the current
/// size, with which ext4 and XFS free blocks past the end (a hole punched there is
/// refused: ext4 punches only below the size).
fn release_past(f: &File, size: u64) {
    let _ = f.set_len(size);
}

/// Allocates the blocks of a range without changing the file's size (`fallocate` with
/// `FALLOC_FL_KEEP_SIZE`); `false` when the filesystem cannot.
fn reserve(f: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: a plain syscall on a descriptor we own.
    unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) == 0 }
}

/// Whether `f` lives on tmpfs, where reserving blocks means zeroing pages in memory.
fn on_tmpfs(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is a valid out-pointer that `fstatfs` fills when it returns 0.
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: rc == 0, so `fstatfs` filled `st`.
    let st = unsafe { st.assume_init() };
    st.f_type == libc::TMPFS_MAGIC
}

/// Asks the kernel to start writing a range to disk now (not wait for it).
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; a failure only loses the hint.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A fixed set of threads for the disk work of upload bodies (writing and hashing
/// batches). Requests hand it closures and await their results; nothing here waits for
/// the network. When the pool is dropped (its store is gone) the threads finish the
/// queue and exit.
pub(crate) struct WriterPool {
    jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for WriterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterPool")
    }
}

impl WriterPool {
    /// `threads` threads (at least 1).
    pub(crate) fn new(threads: usize) -> WriterPool {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("drydock-upload-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        match job {
                            // A panicking job loses only its own result (the caller
                            // sees the channel closed); the thread goes on.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an upload writer thread");
            }
        }
        WriterPool {
            jobs: std::sync::Mutex::new(Some(tx)),
        }
    }

    /// Two threads per core, at least 4: a push keeps one writing and one hashing.
    pub(crate) fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (2 * cores).clamp(4, 64)
    }

    /// Runs `f` on a pool thread. `Err` when the job could not run or panicked. If the
    /// caller stops waiting, the job still runs to its end and its result (with
    /// whatever it owns: a session lock, an upload slot) is dropped on the pool thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        self.submit(f).await
    }

    /// Queues `f` now (not when the returned future is first polled) and returns its
    /// result's future, so a batch is written while the next one is received.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = io::Result<T>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok());
        async move {
            if sent != Some(true) {
                return Err(io::Error::other("the upload writer pool is gone"));
            }
            rx.await
                .map_err(|_| io::Error::other("an upload writer thread failed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `chunks` (as separate sessions when `sessions` is set) and checks the file.
    fn roundtrip(direct: bool, start: usize, chunks: &[usize], sessions: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let prefix: Vec<u8> = (0..start).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &prefix).unwrap();
        let mut expect = prefix;
        let mut a = Appender::open(&path, start as u64, direct).unwrap();
        for (k, &len) in chunks.iter().enumerate() {
            let chunk: Vec<u8> = (0..len).map(|i| ((i * 7 + k) % 253) as u8).collect();
            expect.extend_from_slice(&chunk);
            a.write(Bytes::from(chunk)).unwrap();
            if sessions {
                a.finish().unwrap();
                a = Appender::open(&path, expect.len() as u64, direct).unwrap();
            }
        }
        a.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(
            got == expect,
            "contents differ (direct={direct}, start={start})"
        );
    }

    #[test]
    fn appends_byte_exact_at_any_alignment() {
        for direct in [true, false] {
            for start in [0, 1, 4095, 4096, 5000] {
                roundtrip(
                    direct,
                    start,
                    &[0, 1, 3, 4096, DIRECT_CHUNK + 17, 70_001],
                    false,
                );
                roundtrip(direct, start, &[4095, 2, DIRECT_CHUNK, 9000, 1], true);
            }
        }
    }

    #[test]
    fn many_small_frames_fill_several_writevs() {
        // More frames than one `writev` takes, and more bytes than one queue holds.
        let mut chunks = vec![3usize; BATCH_FRAMES * 2 + 5];
        chunks.extend([BATCH_BYTES - 1, 2, BATCH_BYTES * 2 + 1]);
        for direct in [false, true] {
            roundtrip(direct, 7, &chunks, false);
        }
    }

    /// Blocks allocated to `path`, in bytes.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// However much a request announced, an appender holds no block past what it has
    /// written: an idle client costs the disk only what it sent.
    #[test]
    fn holds_no_blocks_past_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"head").unwrap();
        let mut a = Appender::open(&path, 4, false).unwrap();
        let batch: Vec<Bytes> = (0..4)
            .map(|_| Bytes::from(vec![7u8; BATCH_BYTES / 4]))
            .collect();
        a.write_batch(&batch).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 4 + BATCH_BYTES as u64);
        // Allocation is in filesystem blocks: at most one more than the data needs.
        let got = allocated(&path);
        assert!(got <= len + 64 * 1024, "{got} bytes allocated for {len}");
        assert_eq!(a.finish().unwrap(), BATCH_BYTES as u64);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4], b"head");
        assert!(data[4..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_long_body_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"").unwrap();
        let total = 9 * BATCH_BYTES + 5;
        let mut a = Appender::open(&path, 0, false).unwrap();
        let mut expect = Vec::with_capacity(total);
        let mut k = 0usize;
        while expect.len() < total {
            let n = (total - expect.len()).min(300_007);
            let chunk: Vec<u8> = (0..n).map(|i| ((i + k) % 251) as u8).collect();
            expect.extend_from_slice(&chunk);
            a.write_batch(&[Bytes::from(chunk)]).unwrap();
            k += 1;
        }
        assert_eq!(a.finish().unwrap(), total as u64);
        assert!(std::fs::read(&path).unwrap() == expect);
        assert!(allocated(&path) <= total as u64 + 64 * 1024);
    }

    #[test]
    fn a_body_of_whole_chunks_leaves_no_tail() {
        roundtrip(true, 0, &[DIRECT_CHUNK, DIRECT_CHUNK, ALIGN * 3], false);
    }
}
