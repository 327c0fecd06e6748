//! Per-patient order: messages about one patient are applied one at a time, in the order
//! they ask for their patient's turn; messages about different patients run in parallel.
//!
//! A message asks for its turn as soon as it is read (its patient keys read from PID-3 and
//! MRG-1 by `fhir_profiles::v2::patient_keys`, before it is translated: a long message takes
//! longer to translate, and must not be overtaken by a short one that arrived after it), and
//! holds it until its database transaction has committed (or failed) and its answer is
//! decided, so the next message about the patient sees everything the previous one wrote. The turns are
//! `tokio::sync::Mutex`es, which grant the lock in the order it was asked for (FIFO), one per
//! patient key (a PID-3 identifier, `system|value`). A message naming several patients (an
//! A40 merge) takes their keys in sorted order, so two such messages cannot deadlock.
//!
//! The order is within one gateway process: replicas behind a load balancer do not share it
//! (a sending system keeps one connection, so one replica, per feed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Turns = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// The turns of the patients that messages are being applied to now.
#[derive(Debug, Default, Clone)]
pub struct PatientOrder {
    turns: Arc<Mutex<Turns>>,
}

/// The turns one message holds; released when dropped.
#[derive(Debug)]
pub struct Turn {
    guards: Vec<OwnedMutexGuard<()>>,
    keys: Vec<String>,
    turns: Arc<Mutex<Turns>>,
}

impl PatientOrder {
    /// Waits for the turn of every patient key (behind the messages that asked before).
    pub async fn turn(&self, keys: &[String]) -> Turn {
        let mut keys: Vec<String> = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for key in &keys {
            let lock = {
                let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
                turns.entry(key.clone()).or_default().clone()
            };
            guards.push(lock.lock_owned().await);
        }
        Turn {
            guards,
            keys,
            turns: self.turns.clone(),
        }
    }

    /// How many patients have a message waiting or running (for tests and metrics).
    pub fn patients_in_progress(&self) -> usize {
        self.turns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guards.clear();
        // forget the turns nobody else waits for (the map holds one reference, a waiter another)
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if turns
                .get(key)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                turns.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_patient_waits_other_patients_do_not() {
        let order = PatientOrder::default();
        let first = order.turn(&["sys|1".to_owned()]).await;
        // another patient goes at once
        let other = tokio::time::timeout(
            Duration::from_millis(100),
            order.turn(&["sys|2".to_owned()]),
        )
        .await
        .expect("another patient is not held up");
        drop(other);
        // the same patient waits until the first is done
        let same = order.clone();
        let waiting = tokio::spawn(async move { same.turn(&["sys|1".to_owned()]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the second message on a patient waits"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("it goes once the first is done")
            .expect("joined");
        drop(second);
        assert_eq!(
            order.patients_in_progress(),
            0,
            "finished turns are forgotten"
        );
    }

    #[tokio::test]
    async fn turns_are_granted_in_the_order_asked() {
        let order = PatientOrder::default();
        let first = order.turn(&["p".to_owned()]).await;
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for n in 0..20 {
            let order = order.clone();
            let sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = order.turn(&["p".to_owned()]).await;
                sender.send(n).expect("send");
            }));
            // each asks after the previous one
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(first);
        for task in tasks {
            task.await.expect("joined");
        }
        drop(sender);
        let mut got = Vec::new();
        while let Some(n) = receiver.recv().await {
            got.push(n);
        }
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
