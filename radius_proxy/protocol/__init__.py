"""The RADIUS wire protocol: bytes and values in, values and bytes out.

Nothing in this package touches a socket, the event loop, the clock (it is passed in),
ldap3 or requests.
"""
