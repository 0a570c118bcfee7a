//! Task ownership: every server owns its tasks and aborts them when dropped, so a failing test
//! never leaves a listener behind.

use tokio::task::JoinHandle;

/// Tasks aborted on drop. Aborting a server's accept loop drops its `JoinSet` of connection
/// tasks, which aborts those too.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Spawns `future` on the current runtime and keeps its handle.
    pub(crate) fn spawn(&mut self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(future));
    }

    /// Aborts every task now.
    pub(crate) fn abort_all(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}
