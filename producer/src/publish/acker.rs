//! The acker: awaits each generation's delivery reports in send order and feeds them to
//! [`crate::ack::Acks`], telling the tail what to prune.

use std::time::Instant;

use barista_runtime::lock;
use tokio::sync::mpsc;

use super::window::CloseOnDrop;
use super::{AckerStop, Pending, Publisher, ACKS};
use crate::ack::Closes;
use crate::tail::Control;

impl Publisher<'_> {
    /// Starts an acker for the current generation: it awaits delivery reports in send order
    /// and feeds them to [`crate::ack::Acks`], telling the tail what to prune. It stops at the first
    /// failed delivery, or on a poisoned lock, and says which on `stop_tx`.
    pub fn spawn_acker(
        &self,
        stop_tx: mpsc::UnboundedSender<AckerStop>,
    ) -> (mpsc::UnboundedSender<Pending>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let gen = self.gen;
        let acks = self.acks.clone();
        let ctl = self.ctl_tx.clone();
        let ops = self.ops.clone();
        let window = self.window.clone();
        let handle = tokio::spawn(async move {
            // However it ends, nothing more is sent in this generation.
            let _close = CloseOnDrop(window.clone());
            while let Some(Pending { sent, fut }) = rx.recv().await {
                let position = sent.position;
                // A chunk mark (no future) is acknowledged: every report before it is in.
                let failed = match fut {
                    None => None,
                    Some(fut) => match fut.await {
                        Ok(Ok(_)) => None,
                        Ok(Err((e, _))) => Some(format!("position {position}: {e}")),
                        Err(_) => Some(format!("position {position}: delivery report lost")),
                    },
                };
                let error = match failed {
                    None => {
                        if sent.chain.is_some() {
                            window.release();
                        }
                        // The guard is dropped before the next await.
                        let closes = sent.closes != Closes::Nothing;
                        let prune = match lock(&acks, ACKS) {
                            Ok(mut a) => {
                                let prune = a.delivered(gen, sent, Instant::now(), rx.is_empty());
                                if closes && gen == a.gen() {
                                    ops.acked(a.acked().position.0);
                                }
                                prune
                            }
                            Err(e) => {
                                let _ = stop_tx.send(AckerStop::Poisoned(e));
                                return;
                            }
                        };
                        if let Some(acked) = prune {
                            // The tail may be gone at shutdown; the final prune is sent again.
                            let _ = ctl.send(Control::Prune(acked));
                        }
                        continue;
                    }
                    Some(error) => error,
                };
                let _ = stop_tx.send(AckerStop::Failed { gen, error });
                return;
            }
        });
        (tx, handle)
    }
}
