//! The HDF5 library run in a child process.
//!
//! libhdf5 is C, and the 1.10 series that Debian ships crashes on some corrupt files instead of
//! returning an error: a variable-length string whose global-heap index is out of range makes
//! it read past the heap (found by `tests/fuzz_readers.rs`), and its history of fixed crashes
//! on malformed input suggests others. A crash takes the whole process with it, which is not
//! how a bad input file may end. So every call into the library happens in a forked child:
//! the child opens the file, does the work and streams the answer back through a pipe; the
//! parent decodes it (checking every length it reads) and turns a child that dies, stops
//! answering or sends a malformed answer into an error naming the file.
//!
//! Forking a threaded process is safe here because the child only calls the HDF5 library
//! (whose global lock the fork holds, so no other thread can be inside it), allocates (glibc's
//! allocator is fork-safe) and writes to its pipe, then leaves with `_exit` without running
//! anything of the parent's.

use std::io::{Read, Write};
use std::path::Path;

use crate::{Error, Result};

/// How long the child may stay silent before it is stopped: a corrupt file can also send the
/// library into an endless loop, and one block of records takes well under a second.
const SILENCE_LIMIT_MS: i32 = 60_000;

/// The longest record identifier accepted (CODE-15's are integers; a name is far shorter).
pub(super) const MAX_ID_BYTES: usize = 1024;

/// Message tags of the pipe protocol.
const TAG_DONE: u8 = 0;
const TAG_ERROR: u8 = 1;
const TAG_HEADER: u8 = 2;
const TAG_RECORD: u8 = 3;

/// What [`super::Hdf5Tracings::open`] learns from the file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Header {
    pub records: usize,
    pub samples: usize,
    pub sample_rate: f64,
    pub to_mv: f64,
    pub block: usize,
    pub ids: Vec<String>,
}

/// One message from the child.
#[derive(Debug, PartialEq)]
pub(super) enum Message {
    /// The file's description.
    Header(Header),
    /// One recording, lead-major, in mV.
    Record(Vec<f32>),
}

/// The child's side of the pipe.
pub(super) struct Answer<'a>(&'a mut dyn Write);

impl Answer<'_> {
    /// Sends `message`.
    pub fn send(&mut self, message: &Message) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        match message {
            Message::Header(h) => {
                bytes.push(TAG_HEADER);
                for v in [h.records, h.samples, h.block, h.ids.len()] {
                    bytes.extend_from_slice(&(v as u64).to_le_bytes());
                }
                bytes.extend_from_slice(&h.sample_rate.to_le_bytes());
                bytes.extend_from_slice(&h.to_mv.to_le_bytes());
                for id in &h.ids {
                    bytes.extend_from_slice(&(id.len() as u64).to_le_bytes());
                    bytes.extend_from_slice(id.as_bytes());
                }
            }
            Message::Record(values) => {
                bytes.reserve(9 + values.len() * 4);
                bytes.push(TAG_RECORD);
                bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
                for v in values {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        self.0.write_all(&bytes)
    }
}

/// The most values one record may carry, and identifiers one header (the readers' limits).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub record_values: usize,
    pub ids: usize,
}

/// Runs `work` in a child process and returns the messages it sent, or its error, or an error
/// saying how the child failed; every error names `path`.
pub(super) fn run(
    path: &Path,
    limits: Limits,
    work: impl FnOnce(&mut Answer<'_>) -> Result<()>,
) -> Result<Vec<Message>> {
    #[cfg(unix)]
    {
        fork_and_read(path, limits, work)
    }
    // Elsewhere the library runs in this process (no fork); the messages take the same path.
    #[cfg(not(unix))]
    {
        let mut bytes = Vec::new();
        let outcome = work(&mut Answer(&mut bytes));
        finish(&mut bytes, outcome);
        decode(&mut bytes.as_slice(), path, limits)
    }
}

/// Ends the child's answer: done, or the error's reason.
fn finish(out: &mut dyn Write, outcome: Result<()>) {
    let bytes = match outcome {
        Ok(()) => vec![TAG_DONE],
        Err(e) => {
            // The parent names the file itself; keep the reason only.
            let reason = match e {
                Error::Core(mmcl_core::Error::Format { reason, .. }) => reason,
                other => other.to_string(),
            };
            let mut bytes = vec![TAG_ERROR];
            bytes.extend_from_slice(&(reason.len() as u64).to_le_bytes());
            bytes.extend_from_slice(reason.as_bytes());
            bytes
        }
    };
    // A parent that stopped listening has its own error to report.
    let _ = out.write_all(&bytes);
}

#[cfg(unix)]
fn fork_and_read(
    path: &Path,
    limits: Limits,
    work: impl FnOnce(&mut Answer<'_>) -> Result<()>,
) -> Result<Vec<Message>> {
    use std::os::fd::{FromRawFd, OwnedFd};

    let failed = |what: &str, e: std::io::Error| {
        Error::format(path, format!("cannot start the HDF5 reader ({what}): {e}"))
    };
    // Pipe and fork under the library's lock: no other thread is inside HDF5 when the child
    // is made, and no other reader's child inherits this pipe's write end.
    let forked = hdf5_metno::sync::sync(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(failed("pipe", std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just opened by pipe2 and are owned here alone.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only runs `child_main`, which ends in `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(failed("fork", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(read_end);
            child_main(parent, write_end, work);
        }
        Ok((pid, read_end))
    });
    let (pid, read_end) = forked?;
    let mut pipe = PatientReader {
        file: std::fs::File::from(read_end),
    };
    let decoded = decode(&mut pipe, path, limits);
    if decoded.is_err() {
        // A malformed or late answer: the child must not outlive the read.
        // SAFETY: `pid` is this process's own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    drop(pipe);
    let status = reap(pid);
    // A crash explains a cut answer better than the cut does (SIGKILL is ours, above).
    if let Some(s) = status.filter(|&s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) != libc::SIGKILL)
    {
        return Err(Error::format(
            path,
            format!(
                "the HDF5 library crashed reading this file (signal {}): it is corrupt",
                libc::WTERMSIG(s)
            ),
        ));
    }
    match decoded {
        Ok(messages) if status == Some(0) => Ok(messages),
        Ok(_) => Err(Error::format(
            path,
            format!("the HDF5 reader ended abnormally (wait status {status:?})"),
        )),
        Err(e) => Err(e),
    }
}

/// The child: runs `work`, sends its end, leaves without returning into the parent's code.
#[cfg(unix)]
fn child_main(
    parent: libc::pid_t,
    write_end: std::os::fd::OwnedFd,
    work: impl FnOnce(&mut Answer<'_>) -> Result<()>,
) -> ! {
    // A child stuck in the library must not outlive a parent that was killed meanwhile (the
    // signal follows the forking thread, which waits for the child: so, the process).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; getppid and _exit have no
    // preconditions. The parent may have died before the request: then leave at once.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    let write_end = keep_only(write_end);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::from(write_end));
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let outcome = work(&mut Answer(&mut out));
        finish(&mut out, outcome);
        out.flush()
    })) {
        Ok(Ok(())) => 0,
        _ => 1,
    };
    // SAFETY: `_exit` ends the child at once, running none of the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor the child inherited except the standard three and `keep` (moved to
/// descriptor 3), which it returns.
///
/// Inherited descriptors are not only a leak: an HDF5 file another thread of the parent has
/// open holds a `flock` through its descriptor, and a copy held by a child keeps the file
/// locked after the parent closes it, so the parent's next reader of that file is refused.
#[cfg(unix)]
fn keep_only(keep: std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    const KEPT: i32 = 3;
    let fd = keep.into_raw_fd();
    // SAFETY: single-threaded child; `fd` is open, and descriptor 3 is either it or one the
    // child has no use for (dup2 closes it first).
    unsafe {
        if fd != KEPT {
            libc::dup2(fd, KEPT);
            libc::close(fd);
        }
        close_from(KEPT + 1);
        std::os::fd::OwnedFd::from_raw_fd(KEPT)
    }
}

/// Closes every descriptor from `first` on.
///
/// # Safety
/// Only in the child, where no descriptor from `first` on is owned by live Rust values.
#[cfg(unix)]
unsafe fn close_from(first: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: close_range takes plain integers; on an old kernel it fails and the loop runs.
    if unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) } == 0 {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(256, 1 << 16) as i32;
    for fd in first..max {
        // SAFETY: closing a descriptor nothing in the child uses; EBADF is harmless.
        unsafe { libc::close(fd) };
    }
}

/// Waits for the child; its raw wait status, or `None` if it cannot be had.
#[cfg(unix)]
fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is this process's child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// The pipe's read end, giving up when the child stays silent for [`SILENCE_LIMIT_MS`].
#[cfg(unix)]
struct PatientReader {
    file: std::fs::File,
}

#[cfg(unix)]
impl Read for PatientReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut poll, 1, SILENCE_LIMIT_MS) } {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the HDF5 library sent nothing for {} s",
                            SILENCE_LIMIT_MS / 1000
                        ),
                    ));
                }
                n if n > 0 => return self.file.read(buf),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Decodes the child's messages up to its end, checking each length against `limits` before
/// anything is allocated from it.
fn decode(pipe: &mut dyn Read, path: &Path, limits: Limits) -> Result<Vec<Message>> {
    let cut = |e: std::io::Error| {
        Error::format(
            path,
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the HDF5 reader stopped without an answer".to_string()
            } else {
                format!("the HDF5 reader's answer could not be read: {e}")
            },
        )
    };
    let malformed =
        |what: &str| Error::format(path, format!("the HDF5 reader sent a malformed {what}"));
    let mut messages = Vec::new();
    loop {
        match read_u8(pipe).map_err(cut)? {
            TAG_DONE => return Ok(messages),
            TAG_ERROR => {
                let len = read_len(pipe, 1 << 16)
                    .map_err(cut)?
                    .ok_or_else(|| malformed("error"))?;
                let reason = read_bytes(pipe, len).map_err(cut)?;
                return Err(Error::format(path, String::from_utf8_lossy(&reason)));
            }
            TAG_HEADER => {
                let mut word = || -> Result<u64> { read_u64(pipe).map_err(cut) };
                let (records, samples, block, count) = (word()?, word()?, word()?, word()?);
                let (sample_rate, to_mv) = (f64::from_bits(word()?), f64::from_bits(word()?));
                if count > limits.ids as u64 {
                    return Err(malformed("header"));
                }
                // Grown as the identifiers arrive, not reserved from the count.
                let mut ids = Vec::new();
                for _ in 0..count {
                    let len = read_len(pipe, MAX_ID_BYTES)
                        .map_err(cut)?
                        .ok_or_else(|| malformed("header"))?;
                    let id = read_bytes(pipe, len).map_err(cut)?;
                    ids.push(String::from_utf8(id).map_err(|_| malformed("header"))?);
                }
                let size = |v: u64| usize::try_from(v).map_err(|_| malformed("header"));
                messages.push(Message::Header(Header {
                    records: size(records)?,
                    samples: size(samples)?,
                    sample_rate,
                    to_mv,
                    block: size(block)?,
                    ids,
                }));
            }
            TAG_RECORD => {
                let len = read_len(pipe, limits.record_values)
                    .map_err(cut)?
                    .ok_or_else(|| malformed("record"))?;
                let bytes = read_bytes(pipe, len * 4).map_err(cut)?;
                let values = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                messages.push(Message::Record(values));
            }
            _ => return Err(malformed("message")),
        }
    }
}

fn read_u8(pipe: &mut dyn Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    pipe.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u64(pipe: &mut dyn Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    pipe.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A length, `None` when it exceeds `max`.
fn read_len(pipe: &mut dyn Read, max: usize) -> std::io::Result<Option<usize>> {
    let len = read_u64(pipe)?;
    Ok(usize::try_from(len).ok().filter(|&l| l <= max))
}

fn read_bytes(pipe: &mut dyn Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    pipe.read_exact(&mut bytes)?;
    Ok(bytes)
}
