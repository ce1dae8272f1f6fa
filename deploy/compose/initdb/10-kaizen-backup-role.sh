#!/bin/sh
# Runs once, when the postgres container initializes its data directory: the role the receiver
# and the base backups use (REPLICATION, not superuser), and a pg_hba.conf line that lets it
# open replication connections.
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
    -v password="$KAIZEN_REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE kaizen_backup LOGIN REPLICATION PASSWORD :'password';
SQL
echo "host replication kaizen_backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
