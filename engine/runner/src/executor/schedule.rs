//! Which steps can start: dependency counting, so that deciding costs time proportional to the
//! steps and edges involved, not a rescan of every step after each one finishes.

use std::collections::BTreeSet;

use kiln_store::StepStatus;

/// The state of every step of a run, by index in the workflow file.
#[derive(Debug)]
pub(super) struct Schedule {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Dependencies not yet ended, per step.
    waiting: Vec<usize>,
    /// How a step ended, once it has.
    ended: Vec<Option<StepStatus>>,
    started: Vec<bool>,
    /// Steps neither started nor ended whose dependencies have all ended, in file order.
    ready: BTreeSet<usize>,
}

impl Schedule {
    /// `deps[i]`: the indexes of the steps step `i` depends on.
    pub(super) fn new(deps: Vec<Vec<usize>>) -> Self {
        let n = deps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let ready = (0..n).filter(|&i| waiting[i] == 0).collect();
        Self {
            deps,
            dependents,
            waiting,
            ended: vec![None; n],
            started: vec![false; n],
            ready,
        }
    }

    pub(super) fn start(&mut self, i: usize) {
        self.started[i] = true;
        self.ready.remove(&i);
    }

    /// Step `i` ended (or never will run): its dependents may become ready.
    pub(super) fn end(&mut self, i: usize, status: StepStatus) {
        if self.ended[i].is_some() {
            return;
        }
        self.ended[i] = Some(status);
        self.ready.remove(&i);
        for &d in &self.dependents[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 && !self.started[d] && self.ended[d].is_none() {
                self.ready.insert(d);
            }
        }
    }

    /// Neither started nor ended, and every dependency has ended.
    pub(super) fn is_ready(&self, i: usize) -> bool {
        self.ready.contains(&i)
    }

    /// The first ready step at or after `from`, in file order.
    pub(super) fn next_ready(&self, from: usize) -> Option<usize> {
        self.ready.range(from..).next().copied()
    }

    /// A dependency of ready step `i` that did not succeed, if any.
    pub(super) fn failed_dependency(&self, i: usize) -> Option<usize> {
        self.deps[i]
            .iter()
            .copied()
            .find(|&d| self.ended[d] != Some(StepStatus::Succeeded))
    }

    /// Steps that neither started nor ended, in file order.
    pub(super) fn never_started(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.deps.len()).filter(|&i| !self.started[i] && self.ended[i].is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_become_ready_when_their_dependencies_end() {
        // 0 -> 1 -> 3, 0 -> 2 -> 3, 4 alone
        let mut s = Schedule::new(vec![vec![], vec![0], vec![0], vec![1, 2], vec![]]);
        assert_eq!(s.next_ready(0), Some(0));
        assert_eq!(s.next_ready(1), Some(4));
        s.start(0);
        s.start(4);
        assert_eq!(s.next_ready(0), None);
        s.end(0, StepStatus::Succeeded);
        assert_eq!(s.next_ready(0), Some(1));
        assert_eq!(s.next_ready(2), Some(2));
        s.start(1);
        s.end(1, StepStatus::Succeeded);
        assert_eq!(s.next_ready(3), None, "3 still waits for 2");
        s.start(2);
        s.end(2, StepStatus::Failed);
        assert_eq!(s.next_ready(0), Some(3));
        assert_eq!(s.failed_dependency(3), Some(2));
        s.end(3, StepStatus::Skipped);
        assert_eq!(s.never_started().collect::<Vec<_>>(), Vec::<usize>::new());
        assert!(!s.is_ready(3));
    }
}
