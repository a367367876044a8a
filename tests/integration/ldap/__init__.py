"""The LDAP backend against real directories: OpenLDAP slapd and Samba AD."""
