/**
 * The status bar item: `⚙ 2 workers · CPU 12% · mem 0.4/8.0 GiB` for the active
 * notebook's kernel, and `· epoch 3/10 · loss 0.412` while a fit runs. Hidden for
 * kernels without scalekit. A click opens the sidebar.
 */

import { Widget } from '@lumino/widgets';

import type { ScalekitTracker } from './tracker';
import { statusText, statusTitle } from './view';

export class ScalekitStatus extends Widget {
  constructor(tracker: ScalekitTracker, onClick: () => void) {
    super();
    this.addClass('sk-StatusItem');
    this.addClass('jp-StatusBar-TextItem');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._tracker = tracker;
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        onClick();
      }
    });
    tracker.changed.connect(this.render, this);
    this.render();
  }

  /** Whether the status bar should show the item (the kernel has something to say). */
  get active(): boolean {
    return this._text !== null;
  }

  /** Draw now: the status bar asks `active` right after the tracker's signal. */
  render(): void {
    const snapshot = this._tracker.current?.snapshot ?? null;
    this._text = statusText(snapshot);
    this.node.textContent = this._text ?? '';
    this.node.title = statusTitle(snapshot);
  }

  dispose(): void {
    this._tracker.changed.disconnect(this.render, this);
    super.dispose();
  }

  private _tracker: ScalekitTracker;
  private _text: string | null = null;
}
