"""The access-pass image returned with every new session (``authsessionicondata``).

The real server sends an 88x88 RGBA PNG in Base64 (secsign-id-api.md section 2.1). This one is
a real PNG of the same size, drawn once and embedded, and its Base64 text deliberately contains
``+``, ``/`` and ``=`` padding: clients must split the response on the first ``=`` only and
must not URL-decode the icon (section 3.1), and a simulator without those characters would let
a client that gets it wrong pass.
"""

from __future__ import annotations

ICON_WIDTH = 88
ICON_HEIGHT = 88

ACCESS_ICON_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAFgAAABYCAYAAABxlTA0AAABZklEQVR42u3cOw4CMQxF0eyEpbE9djlUSDQzYkJs"
    "v+fcK1FS+IgC5TcGERERERFR9x7P1/H53On7eyheoK4ABvsCdTXwdti/QEQBt4a+AxAN3A56ZvgMYHvk2aEzgW2h"
    "/x04G9gKecWwFcAWyKsGrQKWRl45ZCWwJPLqAauBpZAjhlMAlkCOGkwFuBQ5cigl4DJkgI1x1YBTkTOGUQROQwa4"
    "Aa4qcDiyIm6bX7EybgtkdVz7fxQOuLb/i51wLZHdcO3WKBxxbVbanHEtkN1x5RflO+BKby0ddBrAAAMMMMAAAwww"
    "wAADDDDAWwKzFsFqGqtprAezo8GeHHty7CpzLoKTPQa41sBbn03jdGWj46vbng/mhDtXCLgIwy0j7slxEXELYO4q"
    "c9ueJw14L8Jka6k9bgRyFfBQj1enTJCzgYdbvPwnDp0BPLrE66uC0FHAY4d4AVsAewXwoHPsWWAUiYiIiIhqewND"
    "rd3UnM5OwgAAAABJRU5ErkJggg=="
)
