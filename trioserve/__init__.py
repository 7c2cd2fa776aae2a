"""trioserve: an HTTP/1.1 server on trio and h11 that no slow client can stall.

The public surface is re-exported here, one name per line; the code lives in private
modules (``trioserve/_*.py``).
"""

from ._config import Config as Config
from ._errors import BadRequest as BadRequest
from ._errors import ClientDisconnected as ClientDisconnected
from ._errors import ContentTooLarge as ContentTooLarge
from ._errors import HeaderFieldsTooLarge as HeaderFieldsTooLarge
from ._errors import HTTPError as HTTPError
from ._errors import HTTPVersionNotSupported as HTTPVersionNotSupported
from ._errors import RequestTimeout as RequestTimeout
from ._errors import StartupError as StartupError
from ._errors import URITooLong as URITooLong
from ._filebody import FileChanged as FileChanged
from ._forms import FormData as FormData
from ._forms import UploadFile as UploadFile
from ._handler import Handler as Handler
from ._headers import Headers as Headers
from ._listeners import ListenerError as ListenerError
from ._listeners import UnixSocketListener as UnixSocketListener
from ._listeners import fd_listener as fd_listener
from ._listeners import open_unix_listener as open_unix_listener
from ._listeners import systemd_listeners as systemd_listeners
from ._request import Request as Request
from ._request import TLSInfo as TLSInfo
from ._response import Response as Response
from ._run import run as run
from ._server import Server as Server
from ._server import serve as serve
from ._stats import ServerStatistics as ServerStatistics
from ._tls import TLSConfigError as TLSConfigError
from ._tls import create_ssl_context as create_ssl_context
from ._tls import reload_certificates as reload_certificates
from ._version import __version__ as __version__
from ._websocket import WebSocket as WebSocket
from ._websocket import WebSocketClosed as WebSocketClosed
