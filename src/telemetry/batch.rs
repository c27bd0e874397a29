//! The log writer: lines go into a bounded batch in memory, and a thread of its own writes the
//! batch out every [`FLUSH_INTERVAL`] (sooner once it holds [`FLUSH_BYTES`]).
//!
//! A request only appends its line under a lock, and never waits for the sink. Nor does it wake
//! the writing thread, as tracing-appender's `non_blocking` does for every line: measured with
//! `scripts/load`'s fixed-rate run, that wake-up (the woken thread preempts the request's on a
//! busy core) added about 80 µs to the median answer. When the sink is slower than the lines
//! come, the batch fills up to its limit; past it, lines are dropped and counted, never queued.
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the batch before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting for the interval.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// The capacity a batch keeps between writes (one after a burst is shrunk back to it).
const KEPT_CAPACITY: usize = 2 * FLUSH_BYTES;

/// Hands lines to the batch (a `MakeWriter` for tracing-subscriber's fmt layer). Cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Dropping it writes what the batch holds and stops the writing thread.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The most bytes the batch holds.
    limit: usize,
    dropped: AtomicUsize,
}

#[derive(Default)]
struct State {
    batch: Vec<u8>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A line is appended whole or not at all: a panic while holding the lock leaves a
        // consistent batch.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        let before = state.batch.len();
        // Past the limit, or after the last write at shutdown: nothing would write it.
        if before + line.len() > self.limit || state.closing {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.batch.extend_from_slice(line);
        if before < FLUSH_BYTES && state.batch.len() >= FLUSH_BYTES {
            self.wake.notify_one();
        }
    }

    /// The writing thread: waits for the interval (or a full batch, or closing), swaps the batch
    /// out, and writes it with the lock released.
    fn run(&self, mut sink: impl Write) {
        let mut out = Vec::new();
        loop {
            let closing = {
                let state = self.lock();
                let (mut state, _) = self
                    .wake
                    .wait_timeout_while(state, FLUSH_INTERVAL, |s| {
                        !s.closing && s.batch.len() < FLUSH_BYTES
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                std::mem::swap(&mut state.batch, &mut out);
                state.closing
            };
            if !out.is_empty() {
                // Nowhere to report a failing log sink but the log itself: the lines are lost.
                let _ = sink.write_all(&out).and_then(|()| sink.flush());
                out.clear();
                out.shrink_to(KEPT_CAPACITY);
            }
            if closing {
                return;
            }
        }
    }
}

/// Starts the writing thread over `sink`; the batch holds at most `limit` bytes.
pub fn spawn(
    sink: impl Write + Send + 'static,
    limit: usize,
) -> std::io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        // Room for a batch at the start, so that the first lines do not grow it under the lock.
        state: Mutex::new(State {
            batch: Vec::with_capacity(KEPT_CAPACITY),
            closing: false,
        }),
        wake: Condvar::new(),
        limit,
        dropped: AtomicUsize::new(0),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || shared.run(sink)
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

impl BatchWriter {
    /// Lines dropped so far because the batch was full.
    pub fn dropped_lines(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer. tracing-subscriber formats an event into a buffer of its own and writes
/// it with one `write_all`, so each `write` here is a whole line.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A sink that sends each write to the test, and can be held shut.
    struct Sink {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            let _ = self.writes.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> (Sink, mpsc::Receiver<Vec<u8>>, Arc<Mutex<()>>) {
        let (writes, received) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        (
            Sink {
                writes,
                gate: gate.clone(),
            },
            received,
            gate,
        )
    }

    #[test]
    fn lines_are_written_in_order_within_the_interval() {
        let (sink, received, _) = sink();
        let (writer, _guard) = spawn(sink, 1 << 20).unwrap();
        let sent = Instant::now();
        for i in 0..3 {
            writeln!(writer.make_writer(), "line {i}").unwrap();
        }
        // One batch, or more if the interval ended between two lines.
        let mut written = Vec::new();
        while written.len() < 21 {
            written.extend(received.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert!(sent.elapsed() < FLUSH_INTERVAL * 20, "{:?}", sent.elapsed());
        assert_eq!(written, b"line 0\nline 1\nline 2\n");
    }

    #[test]
    fn dropping_the_guard_writes_what_is_left() {
        let (sink, received, _) = sink();
        let (writer, guard) = spawn(sink, 1 << 20).unwrap();
        writer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        let all: Vec<u8> = received.try_iter().flatten().collect();
        assert_eq!(all, b"last words\n");
        // Nothing writes after that: a later line is counted as dropped, not kept.
        writer.make_writer().write_all(b"too late\n").unwrap();
        assert_eq!(writer.dropped_lines(), 1);
    }

    #[test]
    fn a_stalled_sink_never_blocks_a_writer_and_the_excess_is_counted() {
        let (sink, received, gate) = sink();
        let shut = gate.lock().unwrap();
        let limit = 4 * 1024;
        let (writer, guard) = spawn(sink, limit).unwrap();
        // The batch fills to its limit (the writing thread may have taken one batch before,
        // and be blocked writing it); every line past that is dropped, and no write waits.
        let line = [b'x'; 100];
        for _ in 0..2_000 {
            writer.make_writer().write_all(&line).unwrap();
        }
        let dropped = writer.dropped_lines();
        assert!(dropped >= 2_000 - 2 * limit / 100, "{dropped} dropped");
        drop(shut);
        drop(guard);
        // Every line is either written, whole, or counted as dropped.
        let written: usize = received.try_iter().map(|w| w.len()).sum();
        assert_eq!(written + dropped * line.len(), 2_000 * line.len());
    }
}
