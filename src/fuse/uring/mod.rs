//! FUSE over io_uring: the kernel hands requests to the daemon through io_uring commands
//! instead of `read` and `write` on `/dev/fuse` (Linux 6.14+, root, and the `fuse` module's
//! `enable_uring` parameter on).
//!
//! The kernel keeps one queue per possible CPU, and queues a request on the queue of the
//! CPU its caller runs on. Here one thread per queue, bound to that CPU, registers a few
//! request buffers (ring entries) with `FUSE_IO_URING_CMD_REGISTER`; the kernel completes
//! one of those commands when it has put a request in its buffers, and the thread answers
//! it and asks for the next one in a single `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`. A request
//! and its reply thus cost one system call of the daemon, and the daemon's thread wakes on
//! the caller's own CPU, where `/dev/fuse` wakes a thread anywhere (docs/benchmarks.md
//! measured libfuse's implementation halving `tar -x`).
//!
//! `INIT` still comes through `/dev/fuse` (fuser answers it and the adapter asks for
//! `FUSE_OVER_IO_URING` there), and so do `FORGET` and interrupts afterwards. Each queue
//! thread serves its requests one at a time: a request that blocks (a copy-up, a wait at a
//! paused write gate) holds up the later requests from callers on that CPU until it ends.

mod codec;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};

use super::FuseAdapter;
use crate::sys;

/// The `max_write` asked for with io_uring: every ring entry needs a payload buffer of that
/// size (fuser's default is 16 MiB).
pub const MAX_WRITE: u32 = 1 << 20;
/// Ring entries per queue: requests from one CPU the kernel can hand over at once.
const QUEUE_DEPTH: usize = 8;
/// `sizeof(struct fuse_uring_req_header)`: in/out header, op header, `ring_ent_in_out`.
const HEADER: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
/// The payload buffer: the kernel wants at least max(8 KiB, max_write, max_pages pages).
const PAYLOAD: usize = MAX_WRITE as usize + 64 * 1024;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Whether FUSE over io_uring was asked for, and what `INIT` settled, which the queue
/// threads wait for.
#[derive(Default)]
pub struct Negotiation {
    want: bool,
    settled: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Negotiation {
    pub fn new(want: bool) -> Negotiation {
        Negotiation {
            want,
            ..Negotiation::default()
        }
    }

    pub fn wanted(&self) -> bool {
        self.want
    }

    pub fn settle(&self, granted: bool) {
        if self.want && !granted {
            info!(
                "the kernel does not offer FUSE over io_uring (it needs Linux 6.14+ and \
                 /sys/module/fuse/parameters/enable_uring set to Y); requests use /dev/fuse"
            );
        }
        *self.settled.lock() = Some(granted);
        self.changed.notify_all();
    }

    /// Releases threads still waiting for `INIT`: the session ended without one.
    fn give_up(&self) {
        self.settled.lock().get_or_insert(false);
        self.changed.notify_all();
    }

    /// Waits for `INIT`; false if io_uring was not granted or `INIT` never came.
    fn granted(&self, timeout: Duration) -> bool {
        let mut s = self.settled.lock();
        let deadline = Instant::now() + timeout;
        while s.is_none() {
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                return false;
            }
        }
        s.unwrap_or(false)
    }
}

/// The queue threads of one mount.
pub struct Rings {
    fs: Arc<FuseAdapter>,
    threads: Vec<JoinHandle<()>>,
    /// One message from each thread as it ends.
    ended: mpsc::Receiver<()>,
}

impl Rings {
    /// Starts one thread per possible CPU, which wait for `INIT` and then serve the
    /// requests of their CPU if io_uring was granted. `dev` is the session's FUSE device.
    pub fn start(fs: Arc<FuseAdapter>, dev: OwnedFd) -> std::io::Result<Rings> {
        let dev = Arc::new(dev);
        let queues = sys::possible_cpus();
        let announced = Arc::new(AtomicBool::new(false));
        let (end_tx, ended) = mpsc::channel();
        let mut threads = Vec::with_capacity(queues);
        for qid in 0..queues {
            let (fs, dev, announced) = (fs.clone(), dev.clone(), announced.clone());
            let end_tx = end_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ufsd-ring-{qid}"))
                    .spawn(move || {
                        let _ended = Ended(end_tx);
                        if !fs.uring.granted(Duration::from_secs(30)) {
                            return;
                        }
                        let serve = |mut q: Queue| {
                            q.serve(&fs, || {
                                if !announced.swap(true, Ordering::Relaxed) {
                                    info!("requests arrive over io_uring ({queues} queues)");
                                }
                            })
                        };
                        match Queue::new(qid, &dev).and_then(serve) {
                            Ok(served) => debug!("ring queue {qid} ended after {served} requests"),
                            Err(e) => warn!("ring queue {qid}: {e}"),
                        }
                    })?,
            );
        }
        Ok(Rings { fs, threads, ended })
    }

    /// Waits for the queue threads after the session ended. The kernel ends their commands
    /// when the mount goes; should a thread still wait after 5 s (the session ended some
    /// other way), the process exits without it.
    pub fn join(self) {
        self.fs.uring.give_up();
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                warn!("a ring thread did not end with the session");
                return;
            }
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Tells [`Rings::join`] that a thread ended, however it ends.
struct Ended(mpsc::Sender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// One ring entry's buffers, registered with the kernel.
struct Entry {
    header: Box<[u8; HEADER]>,
    payload: Vec<u8>,
    /// The two buffers as the kernel reads them at registration.
    iov: Box<[libc::iovec; 2]>,
}

struct Queue {
    qid: usize,
    /// Declared before the buffers, so dropped first: closing the ring ends the kernel's
    /// use of them.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: i32,
    entries: Vec<Entry>,
    /// The request's payload, copied out of the buffer its reply overwrites.
    request: Vec<u8>,
}

impl Queue {
    fn new(qid: usize, dev: &OwnedFd) -> std::io::Result<Queue> {
        sys::pin_to_cpu(qid);
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(2 * QUEUE_DEPTH as u32)
            .build(QUEUE_DEPTH as u32)?;
        let mut entries = Vec::with_capacity(QUEUE_DEPTH);
        for _ in 0..QUEUE_DEPTH {
            let mut header = Box::new([0u8; HEADER]);
            // Zeroed by calloc: pages of the payload cost memory only once a request
            // uses them.
            let mut payload = vec![0u8; PAYLOAD];
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: HEADER,
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: PAYLOAD,
                },
            ]);
            entries.push(Entry {
                header,
                payload,
                iov,
            });
        }
        Ok(Queue {
            qid,
            ring,
            dev: dev.as_raw_fd(),
            entries,
            request: Vec::new(),
        })
    }

    /// The command for ring entry `i`: register it, or commit its reply to request
    /// `commit_id` and fetch the next.
    fn command(&self, i: usize, commit_id: Option<u64>) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req: flags, commit_id, qid.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.unwrap_or(0).to_ne_bytes());
        cmd[16..18].copy_from_slice(&(self.qid as u16).to_ne_bytes());
        let op = if commit_id.is_some() {
            CMD_COMMIT_AND_FETCH
        } else {
            CMD_REGISTER
        };
        let mut sqe = opcode::UringCmd80::new(types::Fd(self.dev), op)
            .cmd(cmd)
            .addr(Some(self.entries[i].iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        if commit_id.is_none() {
            set_sqe_len(&mut sqe, 2);
        }
        sqe
    }

    fn push(&mut self, sqe: squeue::Entry128) -> std::io::Result<()> {
        // SAFETY: the buffers the command points to (the entry's iovecs, header and
        // payload) live as long as the queue, which outlives the ring's commands.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| std::io::Error::other("submission queue full"))
    }

    /// Registers every entry, then answers requests until the session ends; returns how
    /// many it served.
    /// `first` is called when the first request arrives.
    fn serve(&mut self, fs: &FuseAdapter, first: impl Fn()) -> std::io::Result<u64> {
        for i in 0..self.entries.len() {
            let sqe = self.command(i, None);
            self.push(sqe)?;
        }
        let mut served = 0u64;
        let mut registered = false;
        let mut done = Vec::with_capacity(QUEUE_DEPTH);
        loop {
            self.ring.submit_and_wait(1)?;
            done.clear();
            done.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data() as usize, c.result())),
            );
            for &(i, res) in &done {
                match res {
                    0 => {}
                    r if r == -libc::EAGAIN => {
                        // The kernel has not finished INIT yet: register again shortly.
                        std::thread::sleep(Duration::from_millis(1));
                        let sqe = self.command(i, None);
                        self.push(sqe)?;
                        continue;
                    }
                    r if r == -libc::ENOTCONN || r == -libc::ECANCELED => return Ok(served),
                    r => {
                        return Err(std::io::Error::other(format!(
                            "the kernel refused a ring command: {}",
                            sys::Errno::from_raw(-r)
                        )));
                    }
                }
                if !registered {
                    registered = true;
                    first();
                }
                fs.count_request();
                let (commit_id, destroyed) = self.answer(i, fs);
                served += 1;
                let sqe = self.command(i, Some(commit_id));
                self.push(sqe)?;
                if destroyed {
                    // Hand the reply over; the session is over.
                    let _ = self.ring.submit();
                    return Ok(served);
                }
            }
        }
    }

    /// Serves the request in entry `i` and writes the reply there; returns the commit id
    /// and whether it ended the session.
    fn answer(&mut self, i: usize, fs: &FuseAdapter) -> (u64, bool) {
        let (e, request) = (&mut self.entries[i], &mut self.request);
        let h = codec::InHeader::decode(&e.header[..]);
        let commit_id = u64::from_ne_bytes(
            e.header[ENT_IN_OUT + 8..ENT_IN_OUT + 16]
                .try_into()
                .unwrap(),
        );
        let payload_sz = u32::from_ne_bytes(
            e.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
                .try_into()
                .unwrap(),
        ) as usize;
        request.clear();
        request.extend_from_slice(&e.payload[..payload_sz.min(PAYLOAD)]);
        let op: [u8; OP_IN] = e.header[128..256].try_into().unwrap();
        let served = codec::serve(fs, &h, &op, request, &mut e.payload);
        let (error, len, destroyed) = match served {
            codec::Served::Reply { error, len } => (error, len, false),
            codec::Served::Destroyed => (0, 0, true),
        };
        if destroyed {
            fs.destroy();
        }
        codec::out_header(&mut e.header[..], h.unique, error, len);
        e.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        (commit_id, destroyed)
    }
}

/// Sets the `len` field of a submission entry, which `UringCmd80` leaves at 0 and
/// `FUSE_IO_URING_CMD_REGISTER` reads as the number of iovecs at `addr`.
fn set_sqe_len(sqe: &mut squeue::Entry128, len: u32) {
    // SAFETY: an Entry128 is, by io-uring's repr(C) layout, the kernel's 128-byte SQE,
    // whose `len` is the u32 at byte 24 (`struct io_uring_sqe`).
    unsafe {
        let p = (sqe as *mut squeue::Entry128).cast::<u8>().add(24);
        p.cast::<u32>().write_unaligned(len);
    }
}
