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
  NVML_HINT,
  clusterSummary,
  formatLoss,
  parseAdapt,
  parseScale,
  runRow,
  runRows,
  safeUrl,
  statusText,
  workerRow
} from '../src/view';

const GIB = 2 ** 30;

function cluster(over: Partial<ICluster> = {}): ICluster {
  return {
    id: 'c1',
    backend: 'local',
    status: 'running',
    workers: [0, 1].map(i => ({
      name: `w${i}`,
      address: `tcp://127.0.0.1:${4000 + i}`,
      nthreads: 1,
      cpu: 24,
      memory: GIB / 4,
      memory_limit: 4 * GIB,
      status: 'running'
    })),
    n_workers: 2,
    requested: 2,
    totals: {
      threads: 2,
      cpu: 24,
      cpu_percent: 24,
      memory: GIB / 2,
      memory_limit: 8 * GIB
    },
    adaptive: null,
    dashboard_link: 'http://127.0.0.1:8787/status',
    scheduler_address: 'tcp://127.0.0.1:4000',
    max_workers: 8,
    notice: null,
    time: 1000,
    ...over
  };
}

function run(over: Partial<IRun> = {}): IRun {
  return {
    run_id: 'run-1',
    status: 'running',
    epochs_done: 3,
    max_epochs: 10,
    start_epoch: 0,
    batch: null,
    progress: 0.3,
    loss_key: 'train_loss',
    loss: 0.41234,
    valid_loss: null,
    world_size: 2,
    samples_per_s: 512.4,
    eta_s: 70,
    last_checkpoint: null,
    recoveries: 0,
    lost_steps: 0,
    downtime_s: 0,
    started_at: 900,
    finished_at: null,
    message: '',
    ...over
  };
}

function snapshot(over: Partial<ISnapshot> = {}): ISnapshot {
  return {
    protocol: PROTOCOL,
    type: 'snapshot',
    seq: 1,
    time: 1000,
    cluster: cluster(),
    clusters: 1,
    runs: [],
    ...over
  };
}

describe('status bar text', () => {
  it('shows workers, CPU and memory', () => {
    expect(statusText(snapshot())).toBe(
      '⚙ 2 workers · CPU 24% · mem 0.5/8.0 GiB'
    );
  });

  it('adds epoch and loss while a fit runs', () => {
    const s = snapshot({
      runs: [run({ status: 'finished' }), run({ run_id: 'b' })]
    });
    expect(statusText(s)).toBe(
      '⚙ 2 workers · CPU 24% · mem 0.5/8.0 GiB · epoch 3/10 · loss 0.412'
    );
  });

  it('shows nothing for kernels without scalekit or without a cluster and fit', () => {
    expect(statusText(null)).toBeNull();
    expect(statusText(snapshot({ cluster: null }))).toBeNull();
    expect(
      statusText(
        snapshot({ cluster: null, runs: [run({ status: 'finished' })] })
      )
    ).toBeNull();
  });

  it('says one worker and memory without limits', () => {
    const c = cluster({
      n_workers: 1,
      totals: {
        threads: 1,
        cpu: 0,
        cpu_percent: 0,
        memory: GIB,
        memory_limit: 0
      }
    });
    expect(statusText(snapshot({ cluster: c }))).toBe(
      '⚙ 1 worker · CPU 0% · mem 1.0 GiB'
    );
  });
});

describe('cluster view', () => {
  it('draws per-worker bars as fractions of threads and limits', () => {
    const row = workerRow({ ...cluster().workers[0], nthreads: 2, cpu: 150 });
    expect(row.cpu.fraction).toBeCloseTo(0.75);
    expect(row.cpu.label).toBe('150%');
    expect(row.memory.fraction).toBeCloseTo(1 / 16);
    expect(row.memory.warn).toBe(false);
    const hot = workerRow({
      ...cluster().workers[0],
      cpu: 130,
      memory: 3.5 * GIB
    });
    expect(hot.cpu.fraction).toBe(1);
    expect(hot.cpu.warn).toBe(true);
    expect(hot.memory.warn).toBe(true);
  });

  it('summarises requested size and adaptive bounds', () => {
    expect(clusterSummary(cluster({ requested: 3 }))).toBe(
      '2 workers (requested 3) · 2 threads · CPU 24% · mem 0.5/8.0 GiB'
    );
    expect(
      clusterSummary(cluster({ adaptive: { minimum: 1, maximum: 4 } }))
    ).toMatch(/^2 workers · adaptive 1\.\.4 · /);
  });

  it('links only to http(s) dashboards', () => {
    expect(safeUrl('http://127.0.0.1:8787/status')).toBe(
      'http://127.0.0.1:8787/status'
    );
    expect(safeUrl('javascript:alert(1)')).toBeNull();
    expect(safeUrl(null)).toBeNull();
  });
});

describe('GPU workers', () => {
  // shaped as scalekit/labext.py's worker_dict and cluster_dict send them
  const h200 = {
    name: 'NVIDIA H200',
    resource: 1,
    monitored: true,
    utilization: 37,
    memory: 14 * GIB,
    memory_total: 140 * GIB
  };

  it('draws utilisation and memory bars with the device and its resource', () => {
    const row = workerRow({ ...cluster().workers[0], gpu: h200 });
    expect(row.gpu).not.toBeNull();
    expect(row.gpu!.label).toBe('NVIDIA H200 · GPU=1');
    expect(row.gpu!.tag).toBe('GPU=1');
    expect(row.gpu!.hint).toBeNull();
    expect(row.gpu!.utilization).toEqual({
      fraction: 0.37,
      label: '37%',
      warn: false
    });
    expect(row.gpu!.memory!.fraction).toBeCloseTo(0.1);
    expect(row.gpu!.memory!.label).toBe('14.0/140.0 GiB');
    const full = workerRow({
      ...cluster().workers[0],
      gpu: { ...h200, memory: 135 * GIB, utilization: null }
    });
    expect(full.gpu!.memory!.warn).toBe(true);
    expect(full.gpu!.utilization!.label).toBe('–');
  });

  it('marks a GPU worker without NVML numbers with the nvidia-ml-py hint', () => {
    const row = workerRow({
      ...cluster().workers[0],
      gpu: {
        name: '',
        resource: 1,
        monitored: false,
        utilization: null,
        memory: null,
        memory_total: null
      }
    });
    expect(row.gpu!.label).toBe('GPU=1');
    expect(row.gpu!.tag).toBe('GPU=1');
    expect(row.gpu!.hint).toBe(NVML_HINT);
    expect(row.gpu!.utilization).toBeNull();
    expect(row.gpu!.title).toContain("pip install 'scalekit[gpu]'");
  });

  it('adds GPU totals to the summary, and GPU cells, only with GPUs', () => {
    const cpu = cluster();
    expect(workerRow(cpu.workers[0]).gpu).toBeNull();
    expect(clusterSummary(cpu)).toBe(
      '2 workers · 2 threads · CPU 24% · mem 0.5/8.0 GiB'
    );
    const gpu = cluster({
      workers: cpu.workers.map(w => ({ ...w, gpu: h200 })),
      totals: {
        ...cpu.totals,
        gpu: {
          workers: 2,
          monitored: true,
          utilization: 40.4,
          memory: 28 * GIB,
          memory_total: 280 * GIB
        }
      }
    });
    expect(clusterSummary(gpu)).toBe(
      '2 workers · 2 threads · CPU 24% · mem 0.5/8.0 GiB' +
        ' · 2 GPU workers · GPU 40% · GPU mem 28.0/280.0 GiB'
    );
    const blind = cluster({
      totals: {
        ...cpu.totals,
        gpu: {
          workers: 1,
          monitored: false,
          utilization: null,
          memory: null,
          memory_total: null
        }
      }
    });
    expect(clusterSummary(blind)).toMatch(
      / · 1 GPU worker \(utilisation needs nvidia-ml-py\)$/
    );
  });

  it('shows a CUDA run’s peak GPU memory per rank, and nothing for a CPU run', () => {
    const gpuRun = runRow(
      run({ status: 'finished', peak_gpu_memory: [3.5 * GIB, 3.25 * GIB] }),
      1000
    );
    expect(gpuRun.details).toContain('peak GPU memory per rank 3.5, 3.3 GiB');
    const cpuRun = runRow(run({ peak_gpu_memory: [] }), 1000);
    expect(cpuRun.details.some(d => d.includes('GPU'))).toBe(false);
  });
});

describe('runs', () => {
  it('lists runs newest first with checkpoint and recoveries', () => {
    const s = snapshot({
      runs: [
        run({ run_id: 'old', status: 'finished', progress: 1 }),
        run({
          run_id: 'new',
          batch: [3, 5, 10],
          recoveries: 2,
          lost_steps: 7,
          downtime_s: 4,
          last_checkpoint: { epoch: 3, step: 0, url: 'file:///ck/3', time: 990 }
        })
      ]
    });
    const rows = runRows(s, 1000);
    expect(rows.map(r => r.id)).toEqual(['new', 'old']);
    expect(rows[0].headline).toBe('epoch 3/10 · loss 0.412');
    expect(rows[0].details).toContain('batch 5/10 of epoch 4');
    expect(rows[0].details).toContain(
      'checkpoint: epoch 3 · 10 s ago · file:///ck/3'
    );
    expect(rows[0].details).toContain(
      '2 recoveries · 7 steps redone · 4 s down'
    );
    expect(rows[1].progress).toBe(1);
    expect(rows[1].details).toContain('no checkpoint yet');
  });

  it('formats losses for a narrow space', () => {
    expect(formatLoss(0.000012)).toBe('1.20e-5');
    expect(formatLoss(1.5)).toBe('1.50');
    expect(formatLoss(null)).toBe('–');
    expect(runRow(run({ valid_loss: 0.5 }), 0).headline).toBe(
      'epoch 3/10 · loss 0.412 · valid 0.500'
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
  it('recognises snapshots and replies', () => {
    expect(isSnapshot(snapshot())).toBe(true);
    expect(isSnapshot({ ...snapshot(), protocol: 'other/1' })).toBe(false);
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
