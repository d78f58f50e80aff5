import { describe, expect, it } from 'vitest';

import {
  ICluster,
  IRun,
  ISnapshot,
  PROTOCOL,
  isNewer,
  isReply,
  isSnapshot
} from '../src/protocol';
import {
  clusterRunRows,
  clusterSummary,
  currentRun,
  messageLine,
  parseAdapt,
  parseScale,
  runRows,
  safeUrl,
  statusText,
  statusTitle,
  workerRow
} from '../src/view';
// what the kernel sends, built by scalekit's own snapshot code:
// tests/unit/labext/test_snapshot_fixture.py fails when the two drift apart
import fixture from './fixtures/snapshot.json';

const kernelSnapshot = fixture as unknown as ISnapshot;

function snapshot(over: Partial<ISnapshot> = {}): ISnapshot {
  return { ...structuredClone(kernelSnapshot), ...over };
}

function cluster(over: Partial<ICluster> = {}): ICluster {
  return { ...structuredClone(kernelSnapshot.cluster!), ...over };
}

function runs(): IRun[] {
  return structuredClone(kernelSnapshot.runs);
}

describe('the kernel’s snapshot', () => {
  it('is a snapshot of this protocol, with its view strings', () => {
    expect(isSnapshot(kernelSnapshot)).toBe(true);
    expect(kernelSnapshot.protocol).toBe(PROTOCOL);
    // an older kernel (no view strings) is not taken for one
    const old = structuredClone(kernelSnapshot) as unknown as {
      cluster: { view?: unknown };
    };
    delete old.cluster.view;
    expect(isSnapshot(old)).toBe(false);
    expect(isSnapshot({ ...snapshot(), protocol: 'scalekit/1' })).toBe(false);
  });
});

describe('status bar text', () => {
  it('joins the kernel’s words: workers, CPU, memory, and the running fit', () => {
    expect(statusText(kernelSnapshot)).toBe(
      '⚙ 3 workers · CPU 44% · mem 10.3/23.5 GiB · epoch 1/10 · loss 0.412'
    );
    const done = snapshot({ runs: runs().slice(0, 1) });
    expect(statusText(done)).toBe('⚙ 3 workers · CPU 44% · mem 10.3/23.5 GiB');
    expect(currentRun(done)).toBeNull();
  });

  it('shows nothing for kernels without scalekit or without a cluster and fit', () => {
    expect(statusText(null)).toBeNull();
    expect(statusText(snapshot({ cluster: null, runs: [] }))).toBeNull();
    expect(
      statusText(snapshot({ cluster: null, runs: runs().slice(0, 1) }))
    ).toBeNull();
  });

  it('says what a click does', () => {
    expect(statusTitle(kernelSnapshot)).toBe(
      'scalekit: local cluster, running (click for the scalekit sidebar)'
    );
    expect(statusTitle(null)).toMatch(/^scalekit: no cluster in this kernel/);
  });
});

describe('cluster view', () => {
  it('shows the kernel’s summary, with the machine’s real memory', () => {
    expect(clusterSummary(cluster())).toBe(
      '3 workers (requested 4) · CPU 44 % of 4 threads · memory 10.27 / 23.54 GiB ' +
        '(this machine; limits 35.31 GiB) · 2 GPU workers · GPU 37 % (mean) · ' +
        'GPU memory 14.00 / 140.00 GiB'
    );
    expect(cluster().view.memory_warning).toMatch(
      /^memory limits add up to 35\.31 GiB, 1\.5× this machine's 23\.54 GiB: .* Give each at most 7\.5GiB: /
    );
  });

  it('draws the kernel’s bars: fractions, labels, warnings', () => {
    const [w0, w1, w2] = cluster().workers.map(workerRow);
    expect(w0.cpu).toEqual({ fraction: 0.95, label: '95 %', warn: false });
    expect(w0.title).toBe('tcp://127.0.0.1:40001 · 1 thread');
    expect(w1.memory).toEqual({
      fraction: 0.8411,
      label: '9.90 / 11.77 GiB',
      warn: true
    });
    expect(w1.title).toBe('tcp://127.0.0.1:40002 · 2 threads');
    expect(w0.gpu).toBeNull();
    expect(w1.gpu!.tag).toBe('GPU=1');
    expect(w1.gpu!.utilization!.label).toBe('37 %');
    expect(w1.gpu!.memory!.label).toBe('14.00 / 140.00 GiB');
    expect(w2.gpu!.hint).toBe('utilisation needs nvidia-ml-py');
    expect(w2.gpu!.title).toContain("pip install 'scalekit[gpu]'");
  });

  it('links only to http(s) dashboards', () => {
    expect(safeUrl('http://127.0.0.1:8787/status')).toBe(
      'http://127.0.0.1:8787/status'
    );
    expect(safeUrl('javascript:alert(1)')).toBeNull();
    expect(safeUrl(null)).toBeNull();
  });
});

describe('message line', () => {
  it('shows the kernel’s line while it holds, and what this view said when newer', () => {
    const c = cluster();
    expect(messageLine(null, c)).toEqual({
      level: 'info',
      message: 'scaling to 4 workers',
      time: 1750000001
    });
    const refused = {
      level: 'error',
      message: 'workers: choose 1..8',
      time: 1750000005
    };
    expect(messageLine(refused, c)).toBe(refused);
    const older = { ...refused, time: 1750000000 };
    expect(messageLine(older, c)!.message).toBe('scaling to 4 workers');
  });

  it('is empty once the kernel’s line stopped holding (the workers arrived)', () => {
    const settled = cluster();
    settled.view = { ...settled.view, status_line: null };
    expect(messageLine(null, settled)).toBeNull();
    expect(messageLine(null, null)).toBeNull();
  });
});

describe('runs', () => {
  it('lists runs newest first with the kernel’s headline and details', () => {
    const [recovering, old] = runRows(kernelSnapshot);
    expect([recovering.id, old.id]).toEqual(['new', 'old']);
    expect(recovering.headline).toBe('epoch 1/10 · loss 0.412 · valid 0.500');
    // measured from the events: not the rank's 64e9, with a thousands separator
    expect(recovering.details).toContain(
      '16,000 samples/s (last 2 s) · world size 3 · ETA 33s'
    );
    expect(recovering.details.join(' ')).not.toMatch(/64000000000/);
    expect(old.progress).toBe(1);
    expect(old.details[0]).toBe(
      '1,200 samples/s over the whole run (start-up included) · world size 2 · took 16s'
    );
    expect(old.details).toContain('no recoveries');
  });

  it('shows one failure for a lost worker, and the recovery under way', () => {
    const [recovering] = runRows(kernelSnapshot);
    expect(recovering.alerts).toEqual([
      {
        level: 'error',
        message:
          'rank 1 on tcp://127.0.0.1:40002 lost (generation 0) · ranks 0, 2 stopped with it'
      },
      {
        level: 'warning',
        message:
          'recovering: rank 1 lost on tcp://127.0.0.1:40002; restoring on 2 worker(s)'
      }
    ]);
    expect(runRows(null)).toEqual([]);
  });
});

describe('other runs on the cluster', () => {
  it('lists them with who started them and how to follow them', () => {
    const [theirs] = clusterRunRows(kernelSnapshot);
    expect(theirs.id).toBe('theirs');
    expect(theirs.status).toBe('running');
    expect(theirs.headline).toBe('epoch 2/6 · loss 0.450');
    expect(theirs.details[0]).toBe(
      'NeuralNetClassifier · detached · by ada@lab'
    );
    expect(theirs.details).toContain('follow it: sk.attach("theirs")');
    // the kernel's own runs are not among them, nor in the status bar
    expect(runRows(kernelSnapshot).map(r => r.id)).not.toContain('theirs');
    expect(statusText(kernelSnapshot)).not.toMatch(/epoch 2\/6/);
  });

  it('is empty from a kernel that does not send them', () => {
    const older = snapshot();
    delete older.cluster_runs;
    expect(isSnapshot(older)).toBe(true);
    expect(clusterRunRows(older)).toEqual([]);
    expect(clusterRunRows(null)).toEqual([]);
    expect(isSnapshot({ ...snapshot(), cluster_runs: [{ run_id: 'x' }] })).toBe(
      false
    );
  });
});

describe('controls', () => {
  it('checks the worker count as the kernel will', () => {
    expect(parseScale('3', 8)).toEqual({ ok: true, value: 3 });
    expect(parseScale(' 8 ', 8)).toEqual({ ok: true, value: 8 });
    expect(parseScale('9', 8)).toEqual({
      ok: false,
      error: 'workers: choose 1..8'
    });
    expect(parseScale('0', null).ok).toBe(false);
    expect(parseScale('2.5', 8).ok).toBe(false);
    expect(parseScale('', 8).ok).toBe(false);
  });

  it('checks adaptive bounds', () => {
    expect(parseAdapt('1', '4', 8)).toEqual({
      ok: true,
      value: { minimum: 1, maximum: 4 }
    });
    expect(parseAdapt('5', '2', 8)).toEqual({
      ok: false,
      error: 'minimum must not exceed maximum'
    });
    expect(parseAdapt('1', '9', 8).ok).toBe(false);
    expect(parseAdapt('x', '2', 8).ok).toBe(false);
  });
});

describe('protocol', () => {
  it('recognises replies', () => {
    expect(isSnapshot({ method: 'update', state: {} })).toBe(false);
    expect(
      isReply({ protocol: PROTOCOL, type: 'reply', ok: true, request_id: 'r1' })
    ).toBe(true);
  });

  it('keeps the newest snapshot, and takes a restarted kernel’s first one', () => {
    const a = snapshot({ seq: 5, time: 1000 });
    expect(isNewer(snapshot({ seq: 6, time: 1001 }), a)).toBe(true);
    expect(isNewer(snapshot({ seq: 4, time: 999 }), a)).toBe(false);
    expect(isNewer(a, a)).toBe(false);
    expect(isNewer(snapshot({ seq: 1, time: 2000 }), a)).toBe(true);
    expect(isNewer(a, null)).toBe(true);
  });
});
