/**
 * Full-jitter exponential backoff: the n-th retry (from 0) waits a uniform
 * random time in [0, min(maxMs, minMs * 2^n)], so a crowd of clients that
 * lost the same node spreads itself out instead of arriving in waves.
 */

export interface BackoffOptions {
  /** The ceiling of the first retry's wait (default 500 ms). */
  minMs?: number;
  /** The ceiling of every wait (default 20 s). */
  maxMs?: number;
}

export const DEFAULT_BACKOFF = { minMs: 500, maxMs: 20_000 } as const;

/** The wait before retry number `attempt` (0 for the first). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const minMs = Math.max(0, options.minMs ?? DEFAULT_BACKOFF.minMs);
  const maxMs = Math.max(minMs, options.maxMs ?? DEFAULT_BACKOFF.maxMs);
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}
