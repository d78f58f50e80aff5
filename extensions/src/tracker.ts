/**
 * Which kernel the views show: the active notebook's.
 *
 * Keeps one {@link KernelLink} per kernel connection of the open notebooks (so a
 * switch of notebook shows that kernel's state at once), follows kernel changes, and
 * emits `changed` when the active notebook or its kernel's snapshot changes.
 */

import type { ISessionContext } from '@jupyterlab/apputils';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { KernelLink } from './connection';

export class ScalekitTracker {
  constructor(notebooks: INotebookTracker) {
    this._notebooks = notebooks;
    notebooks.widgetAdded.connect((_, panel) => this._follow(panel));
    notebooks.currentChanged.connect(() => this._changed.emit());
    notebooks.forEach(panel => this._follow(panel));
  }

  /** The active notebook's link (`null`: no notebook, or no kernel yet). */
  get current(): KernelLink | null {
    const panel = this._notebooks.currentWidget;
    const kernel = panel?.sessionContext.session?.kernel ?? null;
    return kernel === null ? null : (this._links.get(kernel) ?? null);
  }

  /** The active notebook's name, for the sidebar's header. */
  get currentName(): string | null {
    return this._notebooks.currentWidget?.title.label ?? null;
  }

  /** The active notebook changed, or its kernel's snapshot did. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  private _follow(panel: NotebookPanel): void {
    const context = panel.sessionContext;
    const onKernel = (): void => this._attach(context);
    context.kernelChanged.connect(onKernel);
    panel.disposed.connect(() => {
      context.kernelChanged.disconnect(onKernel);
      this._changed.emit();
    });
    this._attach(context);
  }

  private _attach(context: ISessionContext): void {
    const kernel = context.session?.kernel ?? null;
    if (kernel !== null && !this._links.has(kernel)) {
      const link = new KernelLink(kernel);
      link.changed.connect(() => {
        if (link === this.current) {
          this._changed.emit();
        }
      });
      // a closed notebook or a changed kernel disposes its connection
      kernel.disposed.connect(() => {
        link.dispose();
        this._links.delete(kernel);
      });
      this._links.set(kernel, link);
    }
    this._changed.emit();
  }

  private _notebooks: INotebookTracker;
  private _links = new Map<Kernel.IKernelConnection, KernelLink>();
  private _changed = new Signal<this, void>(this);
}
