//! Appending a request body to an upload's data file.
//!
//! By default bodies go through the page cache: the request's frames are queued as they
//! are (reference-counted, not copied) and handed to the kernel in one `writev` per MiB,
//! and writeback is started every 8 MiB so the fsync at completion waits only for the
//! tail. A freshly pushed blob is then in memory for the pulls that usually follow.
//! When the request announced its length (Content-Length), blocks are reserved ahead of
//! the writes (`fallocate`, 64 MiB at a time, never past the announced end): the
//! filesystem allocates a few large extents instead of reserving and allocating block
//! by block at writeback (on ext4 here: about 6% less server CPU and 8% more MiB/s per
//! 512 MiB push, see docs/performance.md). A request that ends short releases what it
//! reserved. Not on tmpfs, where reserving means zeroing pages the body overwrites, and
//! not with direct writes.
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
/// Bytes queued before one buffered `writev`.
const BUFFERED_CHUNK: usize = 1 << 20;
/// Frames queued before one buffered `writev`, whatever their size (below `IOV_MAX`).
const BUFFERED_FRAMES: usize = 256;
/// Bytes written through the page cache between two writeback kicks.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// Bytes reserved with one `fallocate`: the most a request holds beyond what it sent.
const RESERVE_AHEAD: u64 = 64 << 20;

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
    /// Through the page cache: frames wait for the next `writev`.
    Buffered {
        queued: Vec<Bytes>,
        /// Bytes in `queued`.
        queued_len: usize,
        /// Bytes written but not yet handed to writeback.
        unkicked: u64,
        /// Blocks are reserved up to here...
        reserved: u64,
        /// ...and may be, as the body arrives, up to here (the announced end).
        reserve_end: u64,
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
    /// Opens `path` to append at `offset` (its current size); `announced` is the length
    /// the request announced (Content-Length), when it did.
    pub(crate) fn open(
        path: &Path,
        offset: u64,
        direct_writes: bool,
        announced: Option<u64>,
    ) -> io::Result<Appender> {
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
                let reserve = announced.filter(|_| !on_tmpfs(&plain)).unwrap_or(0);
                Mode::Buffered {
                    queued: Vec::new(),
                    queued_len: 0,
                    unkicked: 0,
                    reserved: offset,
                    reserve_end: offset.saturating_add(reserve),
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
    pub(crate) fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.written += data.len() as u64;
        match &mut self.mode {
            Mode::Buffered {
                queued, queued_len, ..
            } => {
                *queued_len += data.len();
                queued.push(data);
                if *queued_len >= BUFFERED_CHUNK || queued.len() >= BUFFERED_FRAMES {
                    self.write_queued()?;
                }
                Ok(())
            }
            Mode::Direct { file, head, buf } => {
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
                Ok(())
            }
        }
    }

    /// Writes the queued frames through the page cache (one `writev`, more only when
    /// the kernel takes part of them), and starts writeback every few MiB so the final
    /// fsync waits only for the tail.
    fn write_queued(&mut self) -> io::Result<()> {
        let Mode::Buffered {
            queued,
            queued_len,
            unkicked,
            reserved,
            reserve_end,
        } = &mut self.mode
        else {
            return Ok(());
        };
        let end = self.offset + *queued_len as u64;
        while *reserved < end.min(*reserve_end) {
            let len = RESERVE_AHEAD.min(*reserve_end - *reserved);
            if !reserve(&self.plain, *reserved, len) {
                // Not supported here, or no room: the writes will say so if it matters.
                *reserve_end = *reserved;
                break;
            }
            *reserved += len;
        }
        let mut slices: Vec<IoSlice<'_>> = queued.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.plain.write_vectored(rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        drop(slices);
        queued.clear();
        let len = std::mem::take(queued_len) as u64;
        self.offset += len;
        *unkicked += len;
        if *unkicked >= WRITEBACK_EVERY {
            start_writeback(&self.plain, self.offset - *unkicked, *unkicked);
            *unkicked = 0;
        }
        Ok(())
    }

    /// Writes what is queued or buffered; returns the bytes appended in all.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        match &self.mode {
            Mode::Buffered { .. } => self.write_queued()?,
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
            }
        }
        Ok(self.written)
    }
}

/// A request that ends short of what it announced (or fails) leaves no reserved blocks
/// past what it wrote: they are released here, whether it finished or not.
impl Drop for Appender {
    fn drop(&mut self) {
        if let Mode::Buffered { reserved, .. } = &self.mode
            && *reserved > self.offset
        {
            // A truncate to the current size: ext4 and XFS free blocks past the end with
            // it (a hole punched there is refused: ext4 punches only below the size).
            let _ = self.plain.set_len(self.offset);
        }
    }
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
        let mut a = Appender::open(&path, start as u64, direct, None).unwrap();
        for (k, &len) in chunks.iter().enumerate() {
            let chunk: Vec<u8> = (0..len).map(|i| ((i * 7 + k) % 253) as u8).collect();
            expect.extend_from_slice(&chunk);
            a.write(Bytes::from(chunk)).unwrap();
            if sessions {
                a.finish().unwrap();
                a = Appender::open(&path, expect.len() as u64, direct, None).unwrap();
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
        let mut chunks = vec![3usize; BUFFERED_FRAMES * 2 + 5];
        chunks.extend([BUFFERED_CHUNK - 1, 2, BUFFERED_CHUNK * 2 + 1]);
        for direct in [false, true] {
            roundtrip(direct, 7, &chunks, false);
        }
    }

    /// Blocks allocated to `path`, in bytes.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn blocks_are_reserved_ahead_and_released_when_the_body_ends_short() {
        // On disk (tmpfs skips reserving): the test's folder is under TMPDIR.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"head").unwrap();
        let announced = 3 * RESERVE_AHEAD;
        let mut a = Appender::open(&path, 4, false, Some(announced)).unwrap();
        let reserving = matches!(&a.mode, Mode::Buffered { reserve_end, .. } if *reserve_end > 4);
        a.write(Bytes::from(vec![7u8; BUFFERED_CHUNK])).unwrap();
        if reserving {
            // One window ahead of the data, not the whole announced length.
            let got = allocated(&path);
            assert!(
                (RESERVE_AHEAD..2 * RESERVE_AHEAD).contains(&got),
                "{got} bytes allocated after the first write"
            );
        } else {
            let fs = std::env::var("TMPDIR").unwrap_or_default();
            eprintln!("no reservation on this filesystem ({fs}); checking the data only");
        }
        // The body stops here, far short of what it announced.
        assert_eq!(a.finish().unwrap(), BUFFERED_CHUNK as u64);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            len,
            4 + BUFFERED_CHUNK as u64,
            "the size is what was written"
        );
        let got = allocated(&path);
        assert!(
            got <= len + (1 << 20),
            "{got} bytes still allocated for a {len}-byte file"
        );
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4], b"head");
        assert!(data[4..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_body_that_ends_where_it_announced_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"").unwrap();
        let total = RESERVE_AHEAD as usize + 3 * BUFFERED_CHUNK + 5;
        let mut a = Appender::open(&path, 0, false, Some(total as u64)).unwrap();
        let mut expect = Vec::with_capacity(total);
        let mut k = 0usize;
        while expect.len() < total {
            let n = (total - expect.len()).min(300_007);
            let chunk: Vec<u8> = (0..n).map(|i| ((i + k) % 251) as u8).collect();
            expect.extend_from_slice(&chunk);
            a.write(Bytes::from(chunk)).unwrap();
            k += 1;
        }
        assert_eq!(a.finish().unwrap(), total as u64);
        assert!(std::fs::read(&path).unwrap() == expect);
        assert!(allocated(&path) <= total as u64 + (1 << 20));
    }

    #[test]
    fn a_body_of_whole_chunks_leaves_no_tail() {
        roundtrip(true, 0, &[DIRECT_CHUNK, DIRECT_CHUNK, ALIGN * 3], false);
    }
}
