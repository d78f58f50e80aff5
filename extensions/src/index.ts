/**
 * scalekit's JupyterLab extension: a status bar item and a sidebar for the scalekit
 * cluster and training runs of the active notebook's kernel.
 *
 * The kernel side is `scalekit/labext.py` (registered by `%load_ext scalekit`); see
 * `protocol.ts` for the messages and docs/jupyterlab-extension.md for what is shown.
 */

import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import iconSvg from '../style/icon.svg';
import { ScalekitSidebar } from './sidebar';
import { ScalekitStatus } from './statusbar';
import { ScalekitTracker } from './tracker';

export const scalekitIcon = new LabIcon({
  name: 'scalekit:icon',
  svgstr: iconSvg
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'scalekit-jupyterlab:plugin',
  description:
    'Status bar item and sidebar for the scalekit cluster of a notebook kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    statusBar: IStatusBar | null,
    labShell: ILabShell | null
  ) => {
    const tracker = new ScalekitTracker(notebooks);

    const sidebar = new ScalekitSidebar(tracker);
    sidebar.title.icon = scalekitIcon;
    app.shell.add(sidebar, 'left', { rank: 1000 });

    const open = (): void => {
      if (
        labShell !== null &&
        labShell.leftCollapsed === false &&
        sidebar.isVisible
      ) {
        return;
      }
      app.shell.activateById(sidebar.id);
    };
    app.commands.addCommand('scalekit:open-sidebar', {
      label: 'Show the scalekit sidebar',
      execute: open
    });

    if (statusBar !== null) {
      const item = new ScalekitStatus(tracker, open);
      statusBar.registerStatusItem('scalekit-jupyterlab:status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => item.active,
        activeStateChanged: tracker.changed
      });
    }
  }
};

export default plugin;
