/**
 * Pure view logic: what the status bar and the sidebar say about a snapshot.
 *
 * No DOM and no JupyterLab here, so it is unit-tested on plain data
 * (`test/view.test.ts`). The widgets in `statusbar.ts` and `sidebar.ts` only put these
 * strings and fractions on screen.
 */

import type {
  ICluster,
  IRun,
  ISnapshot,
  IWorker,
  IWorkerGpu
} from './protocol';

const GIB = 2 ** 30;

/** Bytes as GiB with one decimal: `1.5`. */
export function gib(bytes: number): string {
  return (Math.max(bytes, 0) / GIB).toFixed(1);
}

/** `1 worker`, `2 workers`. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** A loss for a narrow space: 3 significant digits, exponent when tiny or huge. */
export function formatLoss(loss: number | null): string {
  if (loss === null || !Number.isFinite(loss)) {
    return '–';
  }
  const a = Math.abs(loss);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) {
    return loss.toExponential(2);
  }
  return loss.toPrecision(3);
}

/** Seconds as `45 s`, `3 min`, `2.5 h`. */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds) || seconds < 0) {
    return '–';
  }
  if (seconds < 90) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 5400) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** `12 s ago` from two epoch-second times. */
export function ago(time: number | null, now: number): string {
  if (time === null) {
    return '';
  }
  return `${formatDuration(Math.max(now - time, 0))} ago`;
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(Math.max(x, 0), 1) : 0;
}

/** The running run to show in the status bar: the newest one that runs. */
export function currentRun(snapshot: ISnapshot | null): IRun | null {
  if (snapshot === null) {
    return null;
  }
  const running = snapshot.runs.filter(r => r.status === 'running');
  return running.length ? running[running.length - 1] : null;
}

/** `epoch 3/10 · loss 0.412` for a run (epochs completed, as tqdm counts). */
export function runText(run: IRun): string {
  const total = run.max_epochs === null ? '?' : `${run.max_epochs}`;
  return `epoch ${run.epochs_done}/${total} · loss ${formatLoss(run.loss)}`;
}

/** The cluster's memory: `0.4/8.0 GiB`, or `0.4 GiB` without limits. */
export function memoryText(used: number, limit: number): string {
  return limit > 0 ? `${gib(used)}/${gib(limit)} GiB` : `${gib(used)} GiB`;
}

/**
 * The status bar text, or `null` when there is nothing to show (a kernel without
 * scalekit, or scalekit loaded but no cluster and no fit running).
 *
 * `⚙ 2 workers · CPU 12% · mem 0.4/8.0 GiB`, and while a fit runs
 * `… · epoch 3/10 · loss 0.412`.
 */
export function statusText(snapshot: ISnapshot | null): string | null {
  if (snapshot === null) {
    return null;
  }
  const parts: string[] = [];
  const c = snapshot.cluster;
  if (c !== null) {
    parts.push(plural(c.n_workers, 'worker'));
    parts.push(`CPU ${Math.round(c.totals.cpu_percent)}%`);
    parts.push(`mem ${memoryText(c.totals.memory, c.totals.memory_limit)}`);
  }
  const run = currentRun(snapshot);
  if (run !== null) {
    parts.push(runText(run));
  }
  return parts.length ? `⚙ ${parts.join(' · ')}` : null;
}

/** The status bar's tooltip: backend, status and what a click does. */
export function statusTitle(snapshot: ISnapshot | null): string {
  const c = snapshot?.cluster ?? null;
  const head =
    c === null
      ? 'scalekit: no cluster in this kernel'
      : `scalekit: ${c.backend} cluster, ${c.status}`;
  return `${head} (click for the scalekit sidebar)`;
}

export interface IBar {
  /** 0..1, how full the bar is drawn */
  fraction: number;
  label: string;
  /** over the limit or nearly: drawn in a warning colour */
  warn: boolean;
}

/** What a worker's GPU cell shows: two bars, or (no NVML numbers) a hint. */
export interface IGpuCell {
  /** `GPU=1` (the resource: scalekit pinned one device to the worker), else `GPU` */
  tag: string;
  /** `NVIDIA H200 · GPU=1`, `GPU=1` or `GPU` */
  label: string;
  utilization: IBar | null;
  memory: IBar | null;
  /** set when the worker cannot measure its GPU */
  hint: string | null;
  title: string;
}

export interface IWorkerRow {
  name: string;
  title: string;
  status: string;
  cpu: IBar;
  memory: IBar;
  /** null for a worker without a GPU */
  gpu: IGpuCell | null;
}

/** Said where a GPU worker has no NVML numbers (as `scalekit.widgets.gpu_render`). */
export const NVML_HINT = 'utilisation needs nvidia-ml-py';
export const NVML_HINT_LONG =
  "GPU utilisation and memory need nvidia-ml-py on the workers: pip install 'scalekit[gpu]'";

/** GPU memory: `3.0/140.0 GiB`, `3.0 GiB` without a known size, `–` unknown. */
export function gpuMemoryText(
  used: number | null,
  total: number | null
): string {
  if (used === null) {
    return total ? `–/${gib(total)} GiB` : '–';
  }
  return total ? memoryText(used, total) : `${gib(used)} GiB`;
}

/** A worker's GPU cell. */
export function gpuCell(g: IWorkerGpu): IGpuCell {
  const resource = g.resource > 0 ? `GPU=${g.resource}` : '';
  const label = [g.name, resource].filter(p => p).join(' · ') || 'GPU';
  const tag = resource || 'GPU';
  if (!g.monitored) {
    return {
      tag,
      label,
      utilization: null,
      memory: null,
      hint: NVML_HINT,
      title: `${label}: ${NVML_HINT_LONG}`
    };
  }
  const u = g.utilization;
  const total = g.memory_total ?? 0;
  const memFraction = total > 0 && g.memory !== null ? g.memory / total : 0;
  return {
    tag,
    label,
    utilization: {
      fraction: u === null ? 0 : clamp01(u / 100),
      label: u === null ? '–' : `${Math.round(u)}%`,
      warn: false
    },
    memory: {
      fraction: clamp01(memFraction),
      label: gpuMemoryText(g.memory, g.memory_total),
      warn: memFraction >= 0.9
    },
    hint: null,
    title: label
  };
}

/** One worker's bars: CPU in percent of its threads, memory of its limit. */
export function workerRow(w: IWorker): IWorkerRow {
  const capacity = 100 * Math.max(w.nthreads, 1);
  const memFraction = w.memory_limit > 0 ? w.memory / w.memory_limit : 0;
  return {
    name: w.name,
    title: `${w.address} · ${plural(w.nthreads, 'thread')}`,
    status: w.status,
    cpu: {
      fraction: clamp01(w.cpu / capacity),
      label: `${Math.round(w.cpu)}%`,
      warn: w.cpu > capacity
    },
    memory: {
      fraction: clamp01(memFraction),
      label: memoryText(w.memory, w.memory_limit),
      warn: memFraction >= 0.8
    },
    gpu: w.gpu === undefined ? null : gpuCell(w.gpu)
  };
}

/** The one-line summary above the workers: `2 workers (requested 3) · adaptive 1..4`. */
export function clusterSummary(c: ICluster): string {
  let text = plural(c.n_workers, 'worker');
  if (c.adaptive !== null) {
    text += ` · adaptive ${c.adaptive.minimum}..${c.adaptive.maximum}`;
  } else if (c.requested !== null && c.requested !== c.n_workers) {
    text += ` (requested ${c.requested})`;
  }
  text += ` · ${plural(c.totals.threads, 'thread')}`;
  text += ` · CPU ${Math.round(c.totals.cpu_percent)}%`;
  text += ` · mem ${memoryText(c.totals.memory, c.totals.memory_limit)}`;
  const g = c.totals.gpu;
  if (g !== undefined) {
    // workers, not devices: unpinned workers on one machine all see the same GPU
    text += ` · ${plural(g.workers, 'GPU worker')}`;
    if (g.utilization !== null) {
      text += ` · GPU ${Math.round(g.utilization)}%`;
    }
    if (g.memory !== null) {
      text += ` · GPU mem ${gpuMemoryText(g.memory, g.memory_total)}`;
    }
    if (!g.monitored) {
      text += ` (${NVML_HINT})`;
    }
  }
  return text;
}

/** The URL when it is plain http(s), else `null` (never a `javascript:` link). */
export function safeUrl(url: string | null): string | null {
  if (url && /^https?:\/\//i.test(url.trim())) {
    return url.trim();
  }
  return null;
}

export interface IRunRow {
  id: string;
  status: string;
  /** 0..1 or null when the length of the run is unknown */
  progress: number | null;
  headline: string;
  details: string[];
}

/** What the sidebar shows about one run. */
export function runRow(run: IRun, now: number): IRunRow {
  const details: string[] = [];
  const batch = run.batch;
  if (run.status === 'running' && batch !== null && batch[2] > 0) {
    details.push(`batch ${batch[1]}/${batch[2]} of epoch ${batch[0] + 1}`);
  }
  const speed: string[] = [];
  if (run.world_size !== null) {
    speed.push(`world size ${run.world_size}`);
  }
  if (run.samples_per_s !== null) {
    speed.push(`${Math.round(run.samples_per_s)} samples/s`);
  }
  if (run.status === 'running' && run.eta_s !== null) {
    speed.push(`ETA ${formatDuration(run.eta_s)}`);
  }
  if (speed.length) {
    details.push(speed.join(' · '));
  }
  const ckpt = run.last_checkpoint;
  details.push(
    ckpt === null
      ? 'no checkpoint yet'
      : `checkpoint: epoch ${ckpt.epoch}${ckpt.step > 0 ? ` step ${ckpt.step}` : ''}` +
          ` · ${ago(ckpt.time, now)} · ${ckpt.url}`
  );
  details.push(
    run.recoveries === 0
      ? 'no recoveries'
      : `${plural(run.recoveries, 'recovery', 'recoveries')}` +
          ` · ${plural(run.lost_steps, 'step')} redone · ${formatDuration(run.downtime_s)} down`
  );
  const peak = run.peak_gpu_memory ?? [];
  if (peak.length) {
    details.push(`peak GPU memory per rank ${peak.map(gib).join(', ')} GiB`);
  }
  if (run.message) {
    details.push(run.message);
  }
  let headline = runText(run);
  if (run.valid_loss !== null) {
    headline += ` · valid ${formatLoss(run.valid_loss)}`;
  }
  return {
    id: run.run_id,
    status: run.status,
    progress: run.progress === null ? null : clamp01(run.progress),
    headline,
    details
  };
}

/** Runs newest first, as the sidebar lists them. */
export function runRows(snapshot: ISnapshot | null, now: number): IRunRow[] {
  if (snapshot === null) {
    return [];
  }
  return [...snapshot.runs].reverse().map(r => runRow(r, now));
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

function parseCount(text: string, what: string): Parsed<number> {
  const t = text.trim();
  if (!/^\d+$/.test(t)) {
    return { ok: false, error: `${what}: enter a whole number of workers` };
  }
  return { ok: true, value: parseInt(t, 10) };
}

/** The scale field's value, checked as the kernel will (1..max_workers). */
export function parseScale(
  text: string,
  maxWorkers: number | null
): Parsed<number> {
  const n = parseCount(text, 'workers');
  if (!n.ok) {
    return n;
  }
  if (n.value < 1 || (maxWorkers !== null && n.value > maxWorkers)) {
    const hi = maxWorkers === null ? '' : `..${maxWorkers}`;
    return { ok: false, error: `workers: choose 1${hi}` };
  }
  return n;
}

/** The adaptive bounds, checked as the kernel will (0 <= min <= max <= max_workers). */
export function parseAdapt(
  minText: string,
  maxText: string,
  maxWorkers: number | null
): Parsed<{ minimum: number; maximum: number }> {
  const lo = parseCount(minText, 'minimum');
  if (!lo.ok) {
    return lo;
  }
  const hi = parseCount(maxText, 'maximum');
  if (!hi.ok) {
    return hi;
  }
  if (hi.value < 1) {
    return { ok: false, error: 'maximum: at least 1' };
  }
  if (lo.value > hi.value) {
    return { ok: false, error: 'minimum must not exceed maximum' };
  }
  if (maxWorkers !== null && hi.value > maxWorkers) {
    return { ok: false, error: `maximum: at most ${maxWorkers} (max-workers)` };
  }
  return { ok: true, value: { minimum: lo.value, maximum: hi.value } };
}
