/**
 * Cursor stores: where the id of the last message handed to the app is
 * kept per room, so that a reconnect, a page reload or an app restart
 * resumes after it. A store may be synchronous or return promises (React
 * Native's AsyncStorage, IndexedDB).
 */

export interface CursorStore {
  /** The last id delivered in `room`, if any. */
  get(room: string): string | undefined | null | Promise<string | undefined | null>;
  /** Records the last id delivered in `room`. */
  set(room: string, id: string): void | Promise<void>;
}

/** The default: in memory, for the life of the client object. */
export class MemoryCursors implements CursorStore {
  private readonly ids = new Map<string, string>();

  get(room: string): string | undefined {
    return this.ids.get(room);
  }

  set(room: string, id: string): void {
    this.ids.set(room, id);
  }
}

/** Minimal shape of `window.localStorage`. */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/**
 * Cursors in `localStorage` (browsers), one key per room under a prefix:
 * a page reload resumes where the page stopped.
 */
export class LocalStorageCursors implements CursorStore {
  private readonly storage: KeyValueStorage;
  private readonly prefix: string;

  constructor(prefix = "chat-relay:cursor:", storage?: KeyValueStorage) {
    const found = storage ?? (globalThis as { localStorage?: KeyValueStorage }).localStorage;
    if (found === undefined) {
      throw new TypeError("LocalStorageCursors needs localStorage (a browser); pass a storage or use another CursorStore");
    }
    this.storage = found;
    this.prefix = prefix;
  }

  get(room: string): string | undefined {
    return this.storage.getItem(this.prefix + room) ?? undefined;
  }

  set(room: string, id: string): void {
    try {
      this.storage.setItem(this.prefix + room, id);
    } catch {
      // A full or disabled storage only costs the resume after a reload.
    }
  }
}
