-- A simulated server's name is unique among its account's live servers, as a cloud's API
-- keeps it: the database now enforces it (two daemons creating one name at once no longer
-- both succeed), and a create checks it by inserting (`ON CONFLICT DO NOTHING`) instead of by
-- a query whose plan depends on how fresh the table's statistics are.
--
-- Live servers that share a name (left by such a race) keep it on the oldest; the others get
-- their id appended.
UPDATE sim_servers
   SET name = name || '-' || id
 WHERE deleted_at IS NULL
   AND EXISTS (SELECT 1 FROM sim_servers older
                WHERE older.account = sim_servers.account
                  AND older.name = sim_servers.name
                  AND older.deleted_at IS NULL
                  AND older.id < sim_servers.id);
DROP INDEX sim_servers_live_name;
CREATE UNIQUE INDEX sim_servers_live_name ON sim_servers (account, name) WHERE deleted_at IS NULL;
