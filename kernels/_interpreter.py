"""Compatibility of Triton 3.6's CPU interpreter with NumPy >= 2.4.

The interpreter keeps scalars as one-element arrays and converts them with ``int(array)``,
which NumPy 2.4 turned into a TypeError; every loop with a runtime bound then fails.
Upstream Triton fixed it by squeezing the array first; we do the same, only while the
interpreter is in use, by wrapping the function that installs the scalar conversion.
"""

from __future__ import annotations

_patched = False


def patch_scalar_index() -> None:
    global _patched
    if _patched:
        return
    from triton.runtime import interpreter

    install = getattr(interpreter, "_patch_lang_tensor", None)
    if install is None:  # a Triton whose interpreter no longer has this hook needs no patch
        _patched = True
        return

    def install_with_scalar_index(tensor, scope):
        install(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = install_with_scalar_index
    _patched = True
