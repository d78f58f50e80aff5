/**
 * The sidebar: the active notebook's kernel cluster (backend, workers with CPU and
 * memory bars, dashboard link, scale and adaptive controls, stop) and its current and
 * past training runs (progress, last checkpoint, recoveries).
 *
 * Every control sends an intent to the kernel, which calls the session's own methods;
 * what the sidebar then shows comes from the kernel's next snapshot, not from the click.
 */

import { Widget } from '@lumino/widgets';

import type { KernelLink } from './connection';
import type { ICluster, Intent, ISnapshot, IStatusLine } from './protocol';
import type { ScalekitTracker } from './tracker';
import {
  IBar,
  IGpuCell,
  IRunRow,
  clusterRunRows,
  clusterSummary,
  messageLine,
  parseAdapt,
  parseScale,
  runRows,
  safeUrl,
  workerRow
} from './view';

type Attrs = Record<string, string>;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    el.setAttribute(key, value);
  }
  el.append(...children);
  return el;
}

/** A bar with its label beside it (not on the fill: readable at any fill level). */
function bar(b: IBar, kind: string): HTMLElement {
  const fill = h('div', {
    class: `sk-bar-fill sk-bar-${kind}${b.warn ? ' sk-mod-warn' : ''}`
  });
  fill.style.width = `${(b.fraction * 100).toFixed(1)}%`;
  return h(
    'div',
    { class: 'sk-bar-wrap', title: b.label },
    h('div', { class: 'sk-bar' }, fill),
    h('span', { class: 'sk-bar-label' }, b.label)
  );
}

/**
 * A GPU worker's second row: its GPU (`GPU=1`, the device's name in the title), then
 * utilisation under the CPU bar and memory under the memory bar, or the hint.
 */
function gpuRow(g: IGpuCell): HTMLElement {
  const tag = h('td', { class: 'sk-gpu-tag', title: g.title }, g.tag);
  if (g.utilization === null || g.memory === null) {
    return h(
      'tr',
      { class: 'sk-worker-gpu' },
      tag,
      h(
        'td',
        { class: 'sk-gpu-hint', colspan: '2', title: g.title },
        h('em', {}, g.hint ?? '')
      )
    );
  }
  return h(
    'tr',
    { class: 'sk-worker-gpu' },
    tag,
    h('td', {}, bar(g.utilization, 'gpu')),
    h('td', {}, bar(g.memory, 'gpu-memory'))
  );
}

const CONFIRM_MS = 5000;

export class ScalekitSidebar extends Widget {
  constructor(tracker: ScalekitTracker) {
    super();
    this.id = 'scalekit-sidebar';
    this.addClass('sk-Sidebar');
    this.title.caption = 'scalekit: cluster and training runs';
    this._tracker = tracker;

    this._kernelName = h('div', { class: 'sk-kernel-name' });
    this._empty = h('div', { class: 'sk-empty' });
    this._clusterHead = h('div', { class: 'sk-cluster-head' });
    this._summary = h('div', { class: 'sk-summary' });
    this._memoryWarning = h('div', {
      class: 'sk-memory-warning sk-level-warning'
    });
    this._workers = h('div', { class: 'sk-workers' });
    this._scaleInput = h('input', {
      class: 'sk-scale-input jp-mod-styled',
      type: 'number',
      min: '1',
      'aria-label': 'number of workers'
    });
    this._scaleButton = h(
      'button',
      { class: 'sk-scale-button jp-Button jp-mod-styled jp-mod-accept' },
      'Scale'
    );
    this._adaptMin = h('input', {
      class: 'sk-adapt-min jp-mod-styled',
      type: 'number',
      min: '0',
      'aria-label': 'adaptive minimum'
    });
    this._adaptMax = h('input', {
      class: 'sk-adapt-max jp-mod-styled',
      type: 'number',
      min: '1',
      'aria-label': 'adaptive maximum'
    });
    this._adaptButton = h(
      'button',
      { class: 'sk-adapt-button jp-Button jp-mod-styled' },
      'Adapt'
    );
    this._stopAdaptButton = h(
      'button',
      { class: 'sk-stop-adapt-button jp-Button jp-mod-styled' },
      'Off'
    );
    this._closeButton = h(
      'button',
      { class: 'sk-close-button jp-Button jp-mod-styled jp-mod-warn' },
      'Stop cluster'
    );
    this._message = h('div', { class: 'sk-message', role: 'status' });
    this._runs = h('div', { class: 'sk-run-list' });
    this._clusterRuns = h('div', { class: 'sk-run-list' });

    const controls = h(
      'div',
      { class: 'sk-controls' },
      h(
        'div',
        { class: 'sk-control-row' },
        h('span', { class: 'sk-control-label' }, 'Workers'),
        this._scaleInput,
        this._scaleButton
      ),
      h(
        'div',
        { class: 'sk-control-row' },
        h('span', { class: 'sk-control-label' }, 'Adaptive'),
        this._adaptMin,
        h('span', {}, '..'),
        this._adaptMax
      ),
      h(
        'div',
        { class: 'sk-control-row sk-mod-indented' },
        this._adaptButton,
        this._stopAdaptButton
      ),
      h('div', { class: 'sk-control-row' }, this._closeButton)
    );
    this._cluster = h(
      'section',
      { class: 'sk-cluster' },
      this._clusterHead,
      this._summary,
      this._memoryWarning,
      this._workers,
      controls,
      this._message
    );
    this._runsSection = h(
      'section',
      { class: 'sk-runs' },
      h('h3', {}, 'Training runs'),
      this._runs
    );
    // fits on the same cluster that other kernels, the command line or a detached
    // submission started: `sk.attach(id)` follows one from this notebook
    this._clusterRunsSection = h(
      'section',
      { class: 'sk-runs sk-cluster-runs' },
      h('h3', {}, 'Other runs on this cluster'),
      this._clusterRuns
    );
    this.node.append(
      h(
        'header',
        { class: 'sk-header' },
        h('h2', {}, 'scalekit'),
        this._kernelName
      ),
      this._empty,
      this._cluster,
      this._runsSection,
      this._clusterRunsSection
    );

    this._scaleButton.addEventListener('click', () => this._scale());
    this._scaleInput.addEventListener('keydown', e => {
      if (e.key === 'Enter') {
        this._scale();
      }
    });
    this._scaleInput.addEventListener(
      'input',
      () => (this._edited.scale = true)
    );
    this._adaptMin.addEventListener('input', () => (this._edited.adapt = true));
    this._adaptMax.addEventListener('input', () => (this._edited.adapt = true));
    this._adaptButton.addEventListener('click', () => this._adapt());
    this._stopAdaptButton.addEventListener('click', () =>
      this._send({ action: 'stop_adapt' }, 'switching adaptive scaling off')
    );
    this._closeButton.addEventListener('click', () => this._close());

    tracker.changed.connect(this._onChanged, this);
    this.render();
  }

  /** Draw the current kernel's state (at most as often as snapshots come: 2 Hz). */
  render(): void {
    const link = this._tracker.current;
    if (link !== this._link) {
      this._link = link;
      this._edited = { scale: false, adapt: false };
      this._local = null;
    }
    const name = this._tracker.currentName;
    this._kernelName.textContent = name
      ? `kernel of ${name}`
      : 'no notebook open';
    const snapshot = link?.snapshot ?? null;
    const cluster = snapshot?.cluster ?? null;
    this._empty.textContent = this._emptyText(link, snapshot);
    this._empty.hidden = cluster !== null;
    this._cluster.hidden = cluster === null;
    const runs = runRows(snapshot);
    const others = clusterRunRows(snapshot);
    this._runsSection.hidden = runs.length === 0;
    this._clusterRunsSection.hidden = others.length === 0;
    if (cluster !== null) {
      this._renderCluster(cluster, link);
    }
    this._runs.replaceChildren(...runs.map(runCard));
    this._clusterRuns.replaceChildren(...others.map(runCard));
  }

  dispose(): void {
    this._tracker.changed.disconnect(this._onChanged, this);
    super.dispose();
  }

  protected onAfterShow(): void {
    this.render();
  }

  private _onChanged(): void {
    if (this.isVisible || this._tracker.current !== this._link) {
      this.render();
    }
  }

  private _emptyText(
    link: KernelLink | null,
    snapshot: ISnapshot | null
  ): string {
    if (link === null) {
      return 'Open a notebook to see its kernel’s scalekit cluster.';
    }
    if (snapshot === null) {
      return 'No scalekit cluster in this kernel yet: start one with `sk.cluster()` or `%scalekit up` (after `%load_ext scalekit`).';
    }
    return 'No cluster is running in this kernel. Start one with `%scalekit up`.';
  }

  private _renderCluster(c: ICluster, link: KernelLink | null): void {
    const head: (Node | string)[] = [
      h('span', { class: 'sk-backend' }, c.backend),
      ' · ',
      h('span', { class: `sk-status sk-status-${c.status}` }, c.status)
    ];
    const url = safeUrl(c.dashboard_link);
    if (url !== null) {
      head.push(
        ' · ',
        h(
          'a',
          {
            class: 'sk-dashboard',
            href: url,
            target: '_blank',
            rel: 'noopener'
          },
          'Dask dashboard ↗'
        )
      );
    }
    this._clusterHead.replaceChildren(...head);
    this._summary.textContent = clusterSummary(c);
    this._memoryWarning.textContent = c.view.memory_warning
      ? `⚠ ${c.view.memory_warning}`
      : '';
    this._memoryWarning.hidden = !c.view.memory_warning;

    // a GPU worker gets a second row (the sidebar is too narrow for more columns)
    const rows: HTMLElement[] = [];
    for (const w of c.workers) {
      const row = workerRow(w);
      const name = h(
        'td',
        { class: 'sk-worker-name', title: row.title },
        row.name
      );
      if (row.status !== 'running') {
        name.append(h('em', {}, ` (${row.status})`));
      }
      rows.push(
        h(
          'tr',
          { class: 'sk-worker' },
          name,
          h('td', {}, bar(row.cpu, 'cpu')),
          h('td', {}, bar(row.memory, 'memory'))
        )
      );
      if (row.gpu !== null) {
        rows.push(gpuRow(row.gpu));
      }
    }
    const more =
      c.n_workers > c.workers.length
        ? [
            h(
              'div',
              { class: 'sk-more' },
              `… and ${c.n_workers - c.workers.length} more`
            )
          ]
        : [];
    this._workers.replaceChildren(
      rows.length
        ? h(
            'table',
            {},
            h(
              'thead',
              {},
              h(
                'tr',
                {},
                h('th', {}, 'worker'),
                h('th', {}, 'CPU'),
                h('th', {}, 'memory')
              )
            ),
            h('tbody', {}, ...rows)
          )
        : h('em', {}, 'no workers yet'),
      ...more
    );

    // follow the cluster unless the user is typing a value
    const max = c.max_workers;
    for (const input of [this._scaleInput, this._adaptMax]) {
      if (max !== null) {
        input.max = `${max}`;
      }
    }
    if (!this._edited.scale && document.activeElement !== this._scaleInput) {
      this._scaleInput.value = `${c.adaptive === null && c.requested !== null ? c.requested : c.n_workers}`;
    }
    if (
      !this._edited.adapt &&
      document.activeElement !== this._adaptMin &&
      document.activeElement !== this._adaptMax
    ) {
      this._adaptMin.value = `${c.adaptive?.minimum ?? 1}`;
      this._adaptMax.value = `${c.adaptive?.maximum ?? Math.max(c.n_workers, Math.min(4, max ?? 4))}`;
    }
    this._adaptButton.textContent = c.adaptive === null ? 'Adapt' : 'Update';
    this._stopAdaptButton.disabled = c.adaptive === null || this._busy;
    const readOnly = link === null || !link.canSend || this._busy;
    for (const b of [this._scaleButton, this._adaptButton, this._closeButton]) {
      b.disabled = readOnly;
    }
    const line = messageLine(this._local, c);
    this._message.textContent = line?.message ?? '';
    this._message.className = `sk-message sk-level-${line?.level ?? 'info'}`;
  }

  private _scale(): void {
    const max = this._link?.snapshot?.cluster?.max_workers ?? null;
    const n = parseScale(this._scaleInput.value, max);
    if (!n.ok) {
      this._setMessage(n.error, 'error');
      return;
    }
    this._edited.scale = false;
    this._send({ action: 'scale', n: n.value }, `scaling to ${n.value}…`);
  }

  private _adapt(): void {
    const max = this._link?.snapshot?.cluster?.max_workers ?? null;
    const b = parseAdapt(this._adaptMin.value, this._adaptMax.value, max);
    if (!b.ok) {
      this._setMessage(b.error, 'error');
      return;
    }
    this._edited.adapt = false;
    this._send(
      { action: 'adapt', ...b.value },
      `adaptive ${b.value.minimum}..${b.value.maximum}…`
    );
  }

  private _close(): void {
    if (!this._confirming) {
      this._confirming = true;
      this._closeButton.textContent = 'Click again to stop';
      this._closeButton.classList.add('sk-mod-confirm');
      setTimeout(() => this._resetClose(), CONFIRM_MS);
      return;
    }
    this._resetClose();
    this._send({ action: 'close' }, 'stopping the cluster…');
  }

  private _resetClose(): void {
    this._confirming = false;
    this._closeButton.textContent = 'Stop cluster';
    this._closeButton.classList.remove('sk-mod-confirm');
  }

  private _send(intent: Intent, pending: string): void {
    const link = this._link;
    if (link === null || !link.canSend) {
      this._setMessage('this view of the kernel cannot send commands', 'error');
      return;
    }
    this._busy = true;
    this._setMessage(pending, 'info');
    this.render();
    link
      .request(intent)
      // done: the kernel's status line says the rest ("scaling to 3 workers" until
      // the workers are there); refused: say why until the next action
      .then(reply =>
        reply.ok
          ? (this._local = null)
          : this._setMessage(reply.message || 'refused', 'error')
      )
      .catch((err: Error) => this._setMessage(err.message, 'error'))
      .finally(() => {
        this._busy = false;
        this.render();
      });
  }

  /** What this view says itself, until the kernel says something newer. */
  private _setMessage(text: string, level: string): void {
    this._local = { message: text, level, time: Date.now() / 1000 };
    this._message.textContent = text;
    this._message.className = `sk-message sk-level-${level}`;
  }

  private _tracker: ScalekitTracker;
  private _link: KernelLink | null = null;
  private _edited = { scale: false, adapt: false };
  private _busy = false;
  private _confirming = false;
  private _local: IStatusLine | null = null;
  private _kernelName: HTMLElement;
  private _empty: HTMLElement;
  private _cluster: HTMLElement;
  private _clusterHead: HTMLElement;
  private _summary: HTMLElement;
  private _memoryWarning: HTMLElement;
  private _workers: HTMLElement;
  private _scaleInput: HTMLInputElement;
  private _scaleButton: HTMLButtonElement;
  private _adaptMin: HTMLInputElement;
  private _adaptMax: HTMLInputElement;
  private _adaptButton: HTMLButtonElement;
  private _stopAdaptButton: HTMLButtonElement;
  private _closeButton: HTMLButtonElement;
  private _message: HTMLElement;
  private _runsSection: HTMLElement;
  private _runs: HTMLElement;
  private _clusterRunsSection: HTMLElement;
  private _clusterRuns: HTMLElement;
}

/** One run's card: id and status, a progress bar, the kernel's lines about it. */
function runCard(r: IRunRow): HTMLElement {
  const progress = h('div', { class: 'sk-bar sk-progress' });
  if (r.progress !== null) {
    const fill = h('div', {
      class: `sk-bar-fill sk-bar-run sk-run-${r.status}`
    });
    fill.style.width = `${(r.progress * 100).toFixed(1)}%`;
    progress.append(fill);
    progress.title = `${Math.round(r.progress * 100)}%`;
  }
  return h(
    'div',
    { class: `sk-run sk-run-${r.status}`, 'data-run-id': r.id },
    h(
      'div',
      { class: 'sk-run-head' },
      h('span', { class: 'sk-run-id' }, r.id),
      h('span', { class: `sk-badge sk-badge-${r.status}` }, r.status)
    ),
    progress,
    h('div', { class: 'sk-run-headline' }, r.headline),
    ...r.alerts.map(a =>
      h('div', { class: `sk-run-alert sk-level-${a.level}` }, a.message)
    ),
    ...r.details.map(d => h('div', { class: 'sk-run-detail' }, d))
  );
}
