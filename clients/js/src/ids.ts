/**
 * Message ids (`<ms>-<seq>`, the relay's history stream ids): compared,
 * never built. Clients store them and hand them back.
 */

/** Splits an id into its two decimal parts; `undefined` if it is not one. */
function parts(id: string): [number, number] | undefined {
  const dash = id.indexOf("-");
  if (dash <= 0) return undefined;
  const ms = Number(id.slice(0, dash));
  const seq = Number(id.slice(dash + 1));
  if (!Number.isSafeInteger(ms) || !Number.isSafeInteger(seq)) return undefined;
  return [ms, seq];
}

/** Whether `id` is a message id. */
export function isMessageId(id: unknown): id is string {
  return typeof id === "string" && parts(id) !== undefined;
}

/** Negative, zero or positive as `a` is before, equal to or after `b`. */
export function compareIds(a: string, b: string): number {
  const left = parts(a);
  const right = parts(b);
  if (left === undefined || right === undefined) return a < b ? -1 : a > b ? 1 : 0;
  return left[0] - right[0] || left[1] - right[1];
}
