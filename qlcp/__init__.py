"""QLCP, the Quick Light Curve Pipeline: the one import name of the installed distribution.

The repository keeps the product's layers as top-level folders; the wheel maps
them under this package (``package-dir`` in ``pyproject.toml``), so nothing
generic lands in ``site-packages``:

=====================  ===============  ============================================
import name            folder           what
=====================  ===============  ============================================
``qlcp.core``          ``qlcp_core/``   the science, plain functions (no Prefect)
``qlcp.tasks``         ``tasks/``       Prefect tasks wrapping the core's stages
``qlcp.flows``         ``flows/``       Prefect flows composing the tasks
``qlcp.deployments``   ``deployments/`` sensor, serving and the ``qlcp`` command
=====================  ===============  ============================================
"""


def _installed_layers(path: list) -> None:
    """From a checkout's root (``python -m pytest``, ``python -c`` there: the current directory comes
    first on ``sys.path``) this folder is imported instead of the installed ``qlcp`` and holds none of
    the mapped layers: take them from the installation, e.g. the link tree of the strict editable
    install (``pip install -e . --config-settings editable_mode=strict``), whose files link to the
    repository's folders.  An installed ``qlcp`` (its ``core`` beside this file) is left as it is."""
    import os
    import sys

    if os.path.isdir(os.path.join(path[0], "core")):
        return
    for entry in sys.path:
        d = os.path.join(os.path.abspath(entry or "."), "qlcp")
        if os.path.isdir(os.path.join(d, "core")):
            path.append(d)
            return


_installed_layers(__path__)
