//! Read heat: how often each rule-matched key was read lately, in fixed memory.
//!
//! A count-min sketch per window, two windows: reads go to the current one; every
//! `window_secs` the older window is cleared and becomes the current one, so a key's
//! estimate (current + previous) covers between one and two windows of reads. Like any
//! count-min sketch it may over-count (other keys share counters) but never under-counts a
//! key's reads within the windows it covers, except the rare increment lost when two threads
//! bump the same counter at once: counters are plain relaxed loads and stores, which is what
//! keeps [`Heat::record`] to one cache line and no locked instruction on the read path.
//!
//! The counters of one key sit in one 64-byte block (a "blocked" sketch) of sixteen `u32`
//! counters: the key's FxHash picks the block and four distinct counters in it. Each window
//! has `memory_kib / 2`; a task clears the older window and makes it current every
//! `window_secs`, and an estimate is the minimum over the four counters of both windows' sum.
//!
//! [`Heat::record`] runs on the read path of rule-matched single-key reads (next to the epoch
//! read, in `crate::session::tagging`), so it must stay within a few tens of nanoseconds;
//! what it costs is measured in BENCHMARKS.md, "Read heat".

use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::HeatConfig;

/// Counters per block: 16 × 4 bytes = one cache line.
const SLOTS: usize = 16;
/// Counters one key uses in its block.
const LANES: usize = 4;

#[repr(align(64))]
struct Block([AtomicU32; SLOTS]);

struct Sketch {
    /// Two windows of `mask + 1` blocks each.
    windows: [Box<[Block]>; 2],
    mask: usize,
    /// Index of the window reads go to.
    current: AtomicUsize,
    window: Duration,
}

/// Read counts of rule-matched keys. Cheap to clone (one shared sketch).
#[derive(Clone)]
pub struct Heat {
    sketch: Arc<Sketch>,
}

impl Default for Heat {
    fn default() -> Self {
        Heat::new(&HeatConfig::default())
    }
}

impl Heat {
    pub fn new(config: &HeatConfig) -> Self {
        let per_window = (config.memory_kib.get() * 1024 / 2 / size_of::<Block>()).max(1);
        // A power of two, so a mask picks the block.
        let blocks = 1usize << (usize::BITS - 1 - per_window.leading_zeros());
        let window = || {
            (0..blocks)
                .map(|_| Block(std::array::from_fn(|_| AtomicU32::new(0))))
                .collect::<Box<[Block]>>()
        };
        Heat {
            sketch: Arc::new(Sketch {
                windows: [window(), window()],
                mask: blocks - 1,
                current: AtomicUsize::new(0),
                window: Duration::from_secs(config.window_secs.get()),
            }),
        }
    }

    /// Counts one read of `key`.
    #[inline]
    pub fn record(&self, key: &[u8]) {
        let sketch = &*self.sketch;
        let (block, slots) = sketch.place(key);
        let current = sketch.current.load(Ordering::Relaxed) & 1;
        let counters = &sketch.windows[current][block].0;
        for slot in slots {
            let counter = &counters[slot];
            let n = counter.load(Ordering::Relaxed);
            counter.store(n.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// How often `key` was read in the current and the previous window (an estimate that
    /// may be high, never low; 0 for a key never read).
    pub fn estimate(&self, key: &[u8]) -> u32 {
        let sketch = &*self.sketch;
        let (block, slots) = sketch.place(key);
        let [a, b] = &sketch.windows;
        slots
            .into_iter()
            .map(|slot| {
                let a = a[block].0[slot].load(Ordering::Relaxed);
                let b = b[block].0[slot].load(Ordering::Relaxed);
                a.saturating_add(b)
            })
            .min()
            .unwrap_or(0)
    }

    /// Starts a new window: the older one is cleared and counts from now on.
    pub fn rotate(&self) {
        let sketch = &*self.sketch;
        let next = (sketch.current.load(Ordering::Relaxed) + 1) & 1;
        for block in sketch.windows[next].iter() {
            for counter in &block.0 {
                counter.store(0, Ordering::Relaxed);
            }
        }
        sketch.current.store(next, Ordering::Relaxed);
    }

    /// Rotates the windows every `window_secs` until `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) {
        let heat = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heat.sketch.window);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => heat.rotate(),
                }
            }
        });
    }

    /// Bytes the sketch holds.
    pub fn memory(&self) -> usize {
        2 * (self.sketch.mask + 1) * size_of::<Block>()
    }
}

impl Sketch {
    /// The block of `key` and its four distinct counters in it.
    #[inline]
    fn place(&self, key: &[u8]) -> (usize, [usize; LANES]) {
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write(key);
        // Fx mixes its low bits poorly for short inputs; one multiply-xorshift fixes that.
        let h = hasher.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h = h ^ (h >> 29);
        let block = (h >> 32) as usize & self.mask;
        // An odd step visits four different slots of sixteen.
        let start = (h & 15) as usize;
        let step = ((h >> 4) & 7) as usize * 2 + 1;
        let slots = std::array::from_fn(|i| (start + i * step) & (SLOTS - 1));
        (block, slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reads_and_forgets_them_after_two_windows() {
        let heat = Heat::default();
        assert_eq!(heat.memory(), 512 * 1024);
        for _ in 0..5 {
            heat.record(b"sessions:teacher:1");
        }
        heat.record(b"sessions:teacher:2");
        assert_eq!(heat.estimate(b"sessions:teacher:1"), 5);
        assert_eq!(heat.estimate(b"sessions:teacher:2"), 1);
        assert_eq!(heat.estimate(b"sessions:teacher:3"), 0);
        heat.rotate();
        heat.record(b"sessions:teacher:1");
        assert_eq!(
            heat.estimate(b"sessions:teacher:1"),
            6,
            "both windows count"
        );
        heat.rotate();
        assert_eq!(
            heat.estimate(b"sessions:teacher:1"),
            1,
            "the oldest window is gone"
        );
        heat.rotate();
        assert_eq!(heat.estimate(b"sessions:teacher:1"), 0);
    }

    #[test]
    fn twenty_thousand_keys_in_the_default_sketch_stay_close() {
        let heat = Heat::default();
        for i in 0..20_000u32 {
            heat.record(format!("user:{i}:profile").as_bytes());
        }
        for _ in 0..100 {
            heat.record(b"user:hot:profile");
        }
        let hot = heat.estimate(b"user:hot:profile");
        assert!((100..110).contains(&hot), "{hot}");
        let over: u32 = (0..1000u32)
            .map(|i| heat.estimate(format!("user:{i}:profile").as_bytes()) - 1)
            .sum();
        assert!(
            over < 1000,
            "mean over-count {} per key",
            over as f64 / 1000.0
        );
    }
}
