/**
 * Pure view logic: what the status bar and the sidebar show of a snapshot.
 *
 * The kernel makes every figure's text (the snapshot's `view` parts, built by
 * `scalekit/views/lab_text.py` with the notebook panels' own formatting): nothing here
 * formats a number, so the sidebar and the panels agree. What is left is choosing and
 * joining those strings, and checking what the user types before it is sent. No DOM and
 * no JupyterLab: unit-tested on plain data (`test/view.test.ts`).
 */

import type {
  IBar,
  ICluster,
  IGpuCell,
  IRun,
  ISnapshot,
  IStatusLine,
  IWorker
} from './protocol';

export type { IBar, IGpuCell };

/** The running run to show in the status bar: the newest one that runs. */
export function currentRun(snapshot: ISnapshot | null): IRun | null {
  if (snapshot === null) {
    return null;
  }
  const running = snapshot.runs.filter(r => r.status === 'running');
  return running.length ? running[running.length - 1] : null;
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
  if (snapshot.cluster !== null) {
    parts.push(snapshot.cluster.view.status_bar);
  }
  const run = currentRun(snapshot);
  if (run !== null) {
    parts.push(run.view.status_bar);
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

export interface IWorkerRow {
  name: string;
  title: string;
  status: string;
  cpu: IBar;
  memory: IBar;
  /** null for a worker without a GPU */
  gpu: IGpuCell | null;
}

/** One worker's row, as the kernel drew it. */
export function workerRow(w: IWorker): IWorkerRow {
  return {
    name: w.name,
    title: w.view.title,
    status: w.status,
    cpu: w.view.cpu,
    memory: w.view.memory,
    gpu: w.view.gpu
  };
}

/** The one-line summary above the workers. */
export function clusterSummary(c: ICluster): string {
  return c.view.summary;
}

/**
 * The line under the controls: what this view itself has to say (a value refused
 * before it was sent, a request on its way, a reply that failed) when it is newer than
 * the kernel's status line, else the kernel's line while it holds (`scaling to 3
 * workers` until they are there), else nothing.
 */
export function messageLine(
  local: IStatusLine | null,
  cluster: ICluster | null
): IStatusLine | null {
  const kernel = cluster?.view.status_line ?? null;
  if (local !== null && (kernel === null || local.time >= kernel.time)) {
    return local;
  }
  return kernel;
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
  alerts: { level: string; message: string }[];
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(Math.max(x, 0), 1) : 0;
}

/** What the sidebar shows about one run. */
export function runRow(run: IRun): IRunRow {
  return {
    id: run.run_id,
    status: run.status,
    progress: run.progress === null ? null : clamp01(run.progress),
    headline: run.view.headline,
    details: run.view.details,
    alerts: run.view.alerts
  };
}

/** Runs newest first, as the sidebar lists them. */
export function runRows(snapshot: ISnapshot | null): IRunRow[] {
  if (snapshot === null) {
    return [];
  }
  return [...snapshot.runs].reverse().map(runRow);
}

/**
 * The other runs on the kernel's cluster (other kernels', the command line's, detached
 * ones), newest first; none from a kernel that does not send them.
 */
export function clusterRunRows(snapshot: ISnapshot | null): IRunRow[] {
  if (snapshot === null || !snapshot.cluster_runs) {
    return [];
  }
  return [...snapshot.cluster_runs].reverse().map(runRow);
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
