import { Signal } from '@lumino/signaling';
import { describe, expect, it } from 'vitest';

import { KernelLink } from '../src/connection';
import { PROTOCOL } from '../src/protocol';

/** The parts of a kernel connection a KernelLink uses, recording what it is sent. */
class FakeKernel {
  iopubMessage = new Signal<this, any>(this);
  statusChanged = new Signal<this, string>(this);
  handleComms = true;
  isDisposed = false;
  status = 'idle';
  comms: FakeComm[] = [];
  openComms: Record<string, unknown> = {};

  requestCommInfo(): Promise<any> {
    return Promise.resolve({
      content: { status: 'ok', comms: this.openComms }
    });
  }

  createComm(target: string): FakeComm {
    const comm = new FakeComm(target);
    this.comms.push(comm);
    return comm;
  }

  broadcast(data: unknown): void {
    this.iopubMessage.emit({
      header: { msg_type: 'comm_msg' },
      content: { comm_id: 'broadcast', data }
    });
  }
}

class FakeComm {
  constructor(readonly target: string) {}
  opened: any[] = [];
  sent: any[] = [];
  isDisposed = false;
  onMsg: ((msg: any) => void) | null = null;
  onClose: (() => void) | null = null;
  open(data: unknown): void {
    this.opened.push(data);
  }
  send(data: unknown): void {
    this.sent.push(data);
  }
  close(): void {
    this.isDisposed = true;
  }
  dispose(): void {
    this.isDisposed = true;
  }
  reply(data: Record<string, unknown>): void {
    this.onMsg?.({
      content: {
        comm_id: 'mine',
        data: { protocol: PROTOCOL, type: 'reply', ...data }
      }
    });
  }
}

function snapshot(
  seq: number,
  time = 1000 + seq,
  n = 2
): Record<string, unknown> {
  return {
    protocol: PROTOCOL,
    type: 'snapshot',
    seq,
    time,
    cluster: { id: 'c1', n_workers: n, view: {} },
    clusters: 1,
    runs: []
  };
}

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

describe('KernelLink', () => {
  it('asks nothing of a kernel without scalekit but one comm_info', async () => {
    const kernel = new FakeKernel();
    const link = new KernelLink(kernel as any);
    await tick();
    kernel.iopubMessage.emit({
      header: { msg_type: 'stream' },
      content: { text: 'hi' }
    });
    kernel.broadcast({ method: 'update', state: {} }); // somebody else's comm
    expect(link.snapshot).toBeNull();
    expect(kernel.comms).toEqual([]);
  });

  it('takes broadcast snapshots, newest only, and then opens its own comm', async () => {
    const kernel = new FakeKernel();
    const link = new KernelLink(kernel as any);
    let changes = 0;
    link.changed.connect(() => changes++);
    kernel.broadcast(snapshot(2));
    kernel.broadcast(snapshot(1)); // late duplicate
    expect(link.snapshot?.seq).toBe(2);
    expect(changes).toBe(1);
    expect(kernel.comms.map(c => c.target)).toEqual(['scalekit']);
    expect(kernel.comms[0].opened[0].action).toBe('sync');
  });

  it('finds scalekit through comm_info after a page reload', async () => {
    const kernel = new FakeKernel();
    kernel.openComms = { abc: { target_name: 'scalekit' } };
    new KernelLink(kernel as any);
    await tick();
    expect(kernel.comms).toHaveLength(1);
  });

  it('sends intents for the shown cluster and resolves with the reply', async () => {
    const kernel = new FakeKernel();
    const link = new KernelLink(kernel as any);
    kernel.broadcast(snapshot(1));
    const reply = link.request({ action: 'scale', n: 3 });
    const comm = kernel.comms[0];
    const sent = comm.sent[0];
    expect(sent).toMatchObject({ action: 'scale', n: 3, cluster: 'c1' });
    comm.reply({ request_id: 'other', ok: true, message: '' }); // not ours
    comm.reply({
      request_id: sent.request_id,
      ok: false,
      message: 'workers: got 99'
    });
    await expect(reply).resolves.toMatchObject({
      ok: false,
      message: 'workers: got 99'
    });
  });

  it('forgets everything when the kernel restarts', async () => {
    const kernel = new FakeKernel();
    const link = new KernelLink(kernel as any);
    kernel.broadcast(snapshot(7, 5000));
    const pending = link.request({ action: 'close' });
    kernel.statusChanged.emit('restarting');
    expect(link.snapshot).toBeNull();
    await expect(pending).resolves.toMatchObject({ ok: false });
    expect(kernel.comms[0].isDisposed).toBe(true);
    kernel.broadcast(snapshot(1, 6000)); // the new process counts from 1 again
    expect(link.snapshot?.seq).toBe(1);
    expect(kernel.comms).toHaveLength(2);
  });
});
