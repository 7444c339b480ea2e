"""Who may do what on a shared server, and which files the server may read.

- `settings`: the server's settings file (`cellscope.toml`): data roots and how users log in.
- `roles`: users, roles and the one permission check every page and every core write goes through.

The command line acts as the local administrator (`roles.LOCAL_ADMIN`); a dashboard session acts as the
user who logged in, or as the local administrator when login is off (one user on localhost).
"""
