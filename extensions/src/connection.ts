/**
 * One kernel's scalekit state as this browser tab knows it.
 *
 * A {@link KernelLink} reads the kernel's snapshot broadcasts from IOPub (they arrive
 * while a cell runs, too), and sends the user's intents on a comm of its own, opened
 * only once the kernel has shown that scalekit is loaded: kernels without scalekit are
 * never sent anything but one `comm_info_request`.
 */

import type { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import {
  IReply,
  ISnapshot,
  Intent,
  TARGET,
  isNewer,
  isReply,
  isSnapshot
} from './protocol';

/** How long an intent may wait for the kernel (it queues behind a running cell). */
const REPLY_TIMEOUT_MS = 120_000;

export class KernelLink {
  constructor(kernel: Kernel.IKernelConnection) {
    this.kernel = kernel;
    kernel.iopubMessage.connect(this._onIOPub, this);
    kernel.statusChanged.connect(this._onStatus, this);
    void this._probe();
  }

  readonly kernel: Kernel.IKernelConnection;

  /** The latest snapshot, or `null` (no scalekit in this kernel, or not yet known). */
  get snapshot(): ISnapshot | null {
    return this._snapshot;
  }

  /** Emits when the snapshot changes or is cleared (kernel restart). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Whether intents can be sent (a connection that handles comms). */
  get canSend(): boolean {
    return this.kernel.handleComms && !this.kernel.isDisposed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Send an intent; resolves with the kernel's reply (it may say `ok: false`). */
  async request(intent: Intent): Promise<IReply> {
    const comm = this._ensureComm();
    const requestId = `r${++this._requests}`;
    const cluster = this._snapshot?.cluster?.id;
    const reply = new Promise<IReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(
          new Error('the kernel did not answer (is a cell still running?)')
        );
      }, REPLY_TIMEOUT_MS);
      this._pending.set(requestId, r => {
        clearTimeout(timer);
        resolve(r);
      });
    });
    comm.send({ ...intent, request_id: requestId, cluster: cluster ?? null });
    return reply;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.kernel.iopubMessage.disconnect(this._onIOPub, this);
    this.kernel.statusChanged.disconnect(this._onStatus, this);
    const comm = this._comm;
    if (comm !== null && !comm.isDisposed && this.kernel.status !== 'dead') {
      try {
        comm.close(); // the kernel forgets this tab's comm
      } catch {
        // the connection is already gone
      }
    }
    this._closeComm();
    Signal.clearData(this);
  }

  /** Is scalekit loaded? Its frontends' comms are listed (a page reload, a 2nd view). */
  private async _probe(): Promise<void> {
    try {
      const reply = await this.kernel.requestCommInfo({ target_name: TARGET });
      const content = reply.content;
      if (content.status === 'ok' && Object.keys(content.comms).length > 0) {
        if (this._comm === null && this.canSend) {
          this._ensureComm(); // its opening asks for a snapshot at once
        }
      }
    } catch {
      // a kernel without comm_info, or one that went away: wait for broadcasts
    }
  }

  private _onIOPub(
    _: Kernel.IKernelConnection,
    msg: KernelMessage.IIOPubMessage
  ): void {
    const type = msg.header.msg_type;
    if (type !== 'comm_msg' && type !== 'comm_open') {
      return;
    }
    const data = (msg.content as { data?: unknown }).data;
    if (isSnapshot(data)) {
      if (isNewer(data, this._snapshot)) {
        this._snapshot = data;
        this._changed.emit();
      }
      if (this._comm === null && this.canSend) {
        this._ensureComm();
      }
    }
  }

  /** A message on this tab's own comm: the reply to one of its intents. */
  private _onCommMsg(msg: KernelMessage.ICommMsgMsg): void {
    const data = msg.content.data;
    if (isReply(data) && data.request_id !== null) {
      const resolve = this._pending.get(data.request_id);
      if (resolve) {
        this._pending.delete(data.request_id);
        resolve(data);
      }
    }
  }

  private _onStatus(_: Kernel.IKernelConnection, status: Kernel.Status): void {
    if (
      status === 'restarting' ||
      status === 'autorestarting' ||
      status === 'dead'
    ) {
      // a new process: no scalekit until `%load_ext scalekit` runs again
      this._closeComm();
      if (this._snapshot !== null) {
        this._snapshot = null;
        this._changed.emit();
      }
    }
  }

  private _ensureComm(): Kernel.IComm {
    if (this._comm !== null && !this._comm.isDisposed) {
      return this._comm;
    }
    const comm = this.kernel.createComm(TARGET);
    comm.onMsg = msg => this._onCommMsg(msg);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
      }
    };
    this._comm = comm;
    comm.open({ action: 'sync', request_id: `r${++this._requests}` });
    return comm;
  }

  private _closeComm(): void {
    const comm = this._comm;
    this._comm = null;
    for (const resolve of this._pending.values()) {
      resolve({
        protocol: '',
        type: 'reply',
        request_id: null,
        action: null,
        ok: false,
        message: 'the kernel restarted'
      });
    }
    this._pending.clear();
    if (comm !== null && !comm.isDisposed) {
      comm.dispose();
    }
  }

  private _snapshot: ISnapshot | null = null;
  private _comm: Kernel.IComm | null = null;
  private _requests = 0;
  private _pending = new Map<string, (reply: IReply) => void>();
  private _changed = new Signal<this, void>(this);
  private _disposed = false;
}
