// The statuses a run goes through, as the server records them. The truth lives in Python:
// ACTIVE_STATUSES and FINAL_STATUSES of dst_core/store/schema.py (exported by dst_core.store).
// tests/test_js_statuses.py reads the lists below and fails when they differ from those, so the
// two stay equal.

// A run still recording: it can be stopped and followed live.
export const ACTIVE = Object.freeze(["queued", "running"]);
// A run that records nothing more.
export const FINAL = Object.freeze(["completed", "stopped", "failed"]);
// Every status, in lifecycle order (the runs list's status filter offers them in this order).
export const ALL = Object.freeze([...ACTIVE, ...FINAL]);
// The two a queued run's note tells apart: waiting for a worker, training now.
export const [QUEUED, RUNNING] = ACTIVE;

export function isActive(status) {
  return ACTIVE.includes(status);
}
