/**
 * A room's presence as the SDK keeps it: the snapshot of each `subscribed`
 * (after every reconnect, so it heals by itself), then the batched
 * `presence` changes applied as set operations.
 */

/** What `onPresence` is told: the state now and what just changed. */
export interface PresenceInfo {
  /** Distinct users in the room (anonymous connections count one each). */
  readonly count: number;
  /** The members known: all of them while `complete`, else the first 100 of the snapshot plus later joins. */
  readonly members: ReadonlySet<string>;
  /** Joined since the previous call (empty on a snapshot). */
  readonly joined: readonly string[];
  /** Left since the previous call (empty on a snapshot). */
  readonly left: readonly string[];
  /** Whether `members` lists everyone counted; page the rest with `RelayClient.presenceMembers`. */
  readonly complete: boolean;
  /** `true` when this is a fresh snapshot (first subscribe or a reconnect). */
  readonly snapshot: boolean;
}

export interface PresenceSnapshotFrame {
  count: number;
  members: string[];
}

export interface PresenceChangeFrame {
  joined: string[];
  left: string[];
  count: number;
}

/** The member set of one room; see the module docs. */
export class PresenceSet {
  private count = 0;
  private readonly members = new Set<string>();

  /** Replaces everything with a `subscribed` snapshot. */
  reset(snapshot: PresenceSnapshotFrame): PresenceInfo {
    this.members.clear();
    for (const member of snapshot.members) this.members.add(member);
    this.count = snapshot.count;
    return this.info([], [], true);
  }

  /** Applies one `presence` frame. */
  apply(change: PresenceChangeFrame): PresenceInfo {
    for (const member of change.left) this.members.delete(member);
    for (const member of change.joined) this.members.add(member);
    this.count = change.count;
    return this.info(change.joined, change.left, false);
  }

  private info(joined: readonly string[], left: readonly string[], snapshot: boolean): PresenceInfo {
    return {
      count: this.count,
      members: new Set(this.members),
      joined,
      left,
      complete: this.members.size === this.count,
      snapshot,
    };
  }
}
