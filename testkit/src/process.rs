//! A test's child process, killed and reaped when dropped, so a test that
//! fails while it runs leaves nothing running behind it.

use std::process::Child;

/// Kills the child if the test fails while it runs.
pub struct Reaper(pub Child);

impl Reaper {
    /// SIGKILL, and reap it (a process killed on purpose mid-test).
    pub fn kill(&mut self) {
        self.0.kill().expect("the child can be killed");
        self.0.wait().expect("the killed child is reaped");
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
