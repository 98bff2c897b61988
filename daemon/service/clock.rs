//! # Cycle clock
//!
//! Cycles are driven by observation time. Cycle k is valid at t_k = start + k·c (c = the testbed's
//! cycle length) and its window is (t_k - c/2, t_k + c/2]. Window k closes once an observation later
//! than t_k + c/2 + cutoff has been journaled. Cycle 0 is the initial state: its window and earlier
//! ones are always closed.

/// Window arithmetic in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleClock {
    /// Valid time of cycle 0.
    pub start_ms: i64,
    /// Cycle length c.
    pub cycle_ms: i64,
    /// Cutoff past the end of a window.
    pub cutoff_ms: i64,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

impl CycleClock {
    /// The cycle whose window holds time `t`; None for cycle 0 and earlier.
    pub fn cycle_of(&self, t_ms: i64) -> Option<u64> {
        let k = ceil_div(t_ms - self.start_ms - self.cycle_ms / 2, self.cycle_ms);
        (k >= 1).then_some(k as u64)
    }

    /// The last window closed when the newest observation is at `clock_ms`.
    pub fn closed_by(&self, clock_ms: i64) -> u64 {
        let x = clock_ms - self.start_ms - self.cycle_ms / 2 - self.cutoff_ms;
        (ceil_div(x, self.cycle_ms) - 1).max(0) as u64
    }

    /// Valid time of cycle k.
    pub fn time_of(&self, k: u64) -> i64 {
        self.start_ms + self.cycle_ms * k as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_centred_and_close_after_the_cutoff() {
        let c = CycleClock {
            start_ms: 0,
            cycle_ms: 100,
            cutoff_ms: 100,
        };
        assert_eq!(c.cycle_of(100), Some(1));
        assert_eq!(c.cycle_of(150), Some(1));
        assert_eq!(c.cycle_of(151), Some(2));
        assert_eq!(c.cycle_of(51), Some(1));
        assert_eq!(c.cycle_of(50), None);
        assert_eq!(c.cycle_of(-1000), None);
        // Window 1 ends at 150; with a cutoff of 100 it closes once something later than 250 arrives.
        assert_eq!(c.closed_by(250), 0);
        assert_eq!(c.closed_by(251), 1);
        assert_eq!(c.closed_by(300), 1);
        assert_eq!(c.closed_by(351), 2);
        // The observations of cycle k + 2 close window k when the cutoff is one cycle.
        assert_eq!(c.closed_by(c.time_of(7)), 5);
        let z = CycleClock { cutoff_ms: 0, ..c };
        assert_eq!(z.closed_by(z.time_of(7)), 6);
    }
}
