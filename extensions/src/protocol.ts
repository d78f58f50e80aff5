/**
 * The messages between the kernel (`scalekit/labext/`) and this extension.
 *
 * The kernel broadcasts snapshots (at most twice a second) as `comm_msg` on IOPub; the
 * extension opens its own comm to the `scalekit` target to send intents, which the
 * kernel answers with a reply on that comm.
 *
 * Each part of a snapshot carries a `view`: the strings and bars to show, made in the
 * kernel by `scalekit/views/lab_text.py` with the notebook panels' own formatting. The
 * extension shows them as they are; it formats no numbers, so the sidebar, the status
 * bar and the panels say the same.
 */

/** The comm target the kernel registers when `%load_ext scalekit` runs. */
export const TARGET = 'scalekit';
/** Present on every message of this protocol (`protocol` field). */
export const PROTOCOL = 'scalekit/2';

/** A bar: how full (0..1), the label beside it, whether to draw it as a warning. */
export interface IBar {
  fraction: number;
  label: string;
  warn: boolean;
}

/** A GPU worker's second row: two bars, or (no NVML numbers) a hint. */
export interface IGpuCell {
  /** `GPU=1` (the resource: scalekit pinned one device to the worker), else `GPU` */
  tag: string;
  /** the device and its resource, for the tooltip */
  title: string;
  utilization: IBar | null;
  memory: IBar | null;
  /** set when the worker cannot measure its GPU */
  hint: string | null;
}

/** What a worker's row shows. */
export interface IWorkerView {
  title: string;
  cpu: IBar;
  memory: IBar;
  /** null for a worker without a GPU */
  gpu: IGpuCell | null;
}

/** A status line: an error until the next notice, a warning or info while it holds. */
export interface IStatusLine {
  level: string;
  message: string;
  time: number;
}

/** What the cluster's part of the sidebar and the status bar show. */
export interface IClusterView {
  /** `2 workers (requested 3) · CPU 58 % of 3 threads · memory 0.25 / 23.54 GiB` */
  summary: string;
  /** `2 workers · CPU 58% · mem 0.2/23.5 GiB` */
  status_bar: string;
  /** set when the workers' memory limits overcommit the machine */
  memory_warning: string | null;
  status_line: IStatusLine | null;
}

/** What a run's card shows. */
export interface IRunView {
  /** `epoch 3/10 · loss 0.412 · valid 0.500` */
  headline: string;
  /** `epoch 3/10 · loss 0.412` */
  status_bar: string;
  /** one line each: batch, throughput and world size, checkpoint, recoveries, ... */
  details: string[];
  /** a failure not recovered from yet, a warning while it holds */
  alerts: { level: string; message: string }[];
}

/** A worker's GPU, from Dask's NVML monitoring and the worker's `GPU` resource. */
export interface IWorkerGpu {
  /** the device's name as NVML says it, `''` when the worker did not report it */
  name: string;
  /** the Dask resource `GPU` the worker advertises (scalekit's GPU workers: 1) */
  resource: number;
  /** false: no NVML numbers from this worker (nvidia-ml-py missing, NVML off) */
  monitored: boolean;
  /** percent of the device, latest sample */
  utilization: number | null;
  /** bytes used on the device */
  memory: number | null;
  memory_total: number | null;
}

export interface IWorker {
  name: string;
  address: string;
  nthreads: number;
  /** percent of one core, as psutil reports it (100 * nthreads = fully busy) */
  cpu: number;
  memory: number;
  memory_limit: number;
  status: string;
  /** only on a worker that has a GPU */
  gpu?: IWorkerGpu;
  view: IWorkerView;
}

/** The GPUs of a cluster, over all its workers; only when some worker has one. */
export interface IGpuTotals {
  workers: number;
  monitored: boolean;
  /** mean over the workers that measured it */
  utilization: number | null;
  memory: number | null;
  memory_total: number | null;
}

export interface INotice {
  level: string;
  message: string;
  time: number;
}

export interface ICluster {
  id: string;
  backend: string;
  status: string;
  workers: IWorker[];
  n_workers: number;
  requested: number | null;
  totals: {
    threads: number;
    cpu: number;
    /** percent of capacity: 100 = every thread busy */
    cpu_percent: number;
    memory: number;
    memory_limit: number;
    gpu?: IGpuTotals;
  };
  adaptive: { minimum: number; maximum: number } | null;
  dashboard_link: string | null;
  scheduler_address: string | null;
  max_workers: number | null;
  notice: INotice | null;
  time: number;
  view: IClusterView;
}

export interface ICheckpoint {
  epoch: number;
  step: number;
  url: string;
  time: number;
}

export interface IRun {
  run_id: string;
  status: string;
  epochs_done: number;
  max_epochs: number | null;
  start_epoch: number;
  batch: [number, number, number] | null;
  progress: number | null;
  loss_key: string | null;
  loss: number | null;
  valid_loss: number | null;
  world_size: number | null;
  samples_per_s: number | null;
  eta_s: number | null;
  last_checkpoint: ICheckpoint | null;
  recoveries: number;
  lost_steps: number;
  downtime_s: number;
  /** bytes per rank (torch.cuda.max_memory_allocated); empty without CUDA */
  peak_gpu_memory?: number[];
  started_at: number | null;
  finished_at: number | null;
  message: string;
  view: IRunView;
  /** set on the cluster's runs that this kernel does not drive */
  origin?: 'cluster';
  /** who started it (`user@host`) */
  owner?: string;
  /** the net's class name */
  net?: string;
  detached?: boolean;
  /** the code that follows it from a notebook: `sk.attach("<id>")` */
  attach?: string;
}

export interface ISnapshot {
  protocol: string;
  type: 'snapshot';
  seq: number;
  time: number;
  cluster: ICluster | null;
  clusters: number;
  runs: IRun[];
  /**
   * The other runs recorded on the current cluster (other kernels', the command
   * line's, detached ones), oldest first; absent from kernels that do not send them.
   */
  cluster_runs?: IRun[];
}

export interface IReply {
  protocol: string;
  type: 'reply';
  request_id: string | null;
  action: string | null;
  ok: boolean;
  message: string;
}

export type Intent =
  | { action: 'scale'; n: number }
  | { action: 'adapt'; minimum: number; maximum: number }
  | { action: 'stop_adapt' }
  | { action: 'close' }
  | { action: 'sync' };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Whether a comm message's data is a snapshot of this protocol. */
export function isSnapshot(data: unknown): data is ISnapshot {
  return (
    isRecord(data) &&
    data.protocol === PROTOCOL &&
    data.type === 'snapshot' &&
    typeof data.seq === 'number' &&
    Array.isArray(data.runs) &&
    data.runs.every(r => isRecord(r) && isRecord(r.view)) &&
    (data.cluster_runs === undefined ||
      (Array.isArray(data.cluster_runs) &&
        data.cluster_runs.every(r => isRecord(r) && isRecord(r.view)))) &&
    (data.cluster === null ||
      (isRecord(data.cluster) && isRecord(data.cluster.view)))
  );
}

/** Whether a comm message's data is a reply of this protocol. */
export function isReply(data: unknown): data is IReply {
  return (
    isRecord(data) &&
    data.protocol === PROTOCOL &&
    data.type === 'reply' &&
    typeof data.ok === 'boolean'
  );
}

/**
 * Whether `next` should replace `current`: newer in the same kernel process, or from a
 * new process (its counter starts again, its clock does not go back).
 */
export function isNewer(next: ISnapshot, current: ISnapshot | null): boolean {
  if (current === null) {
    return true;
  }
  return next.seq > current.seq || next.time > current.time;
}
