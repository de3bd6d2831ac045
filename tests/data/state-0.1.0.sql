-- A state store written by release 0.1.0 (schema 2), for the upgrade test. No secrets: fixture data.
PRAGMA user_version = 2;
BEGIN TRANSACTION;
CREATE TABLE conditions (app TEXT PRIMARY KEY, condition TEXT NOT NULL, since TEXT NOT NULL);
INSERT INTO "conditions" VALUES('staging','ok','2026-11-23T20:48:59+00:00');
CREATE TABLE host_results (
        run_id INTEGER NOT NULL REFERENCES runs (id), phase TEXT NOT NULL, host TEXT NOT NULL,
        status TEXT NOT NULL, changed INTEGER NOT NULL, unverified INTEGER NOT NULL,
        PRIMARY KEY (run_id, phase, host));
INSERT INTO "host_results" VALUES(1,'check','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(1,'check','web2.staging','changed',3,0);
INSERT INTO "host_results" VALUES(1,'apply','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(1,'apply','web2.staging','changed',3,0);
INSERT INTO "host_results" VALUES(2,'check','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(2,'check','web2.staging','changed',3,0);
INSERT INTO "host_results" VALUES(3,'check','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(3,'check','web2.staging','changed',3,0);
INSERT INTO "host_results" VALUES(3,'apply','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(3,'apply','web2.staging','changed',3,0);
INSERT INTO "host_results" VALUES(4,'check','web1.staging','changed',3,0);
INSERT INTO "host_results" VALUES(4,'check','web2.staging','changed',3,0);
CREATE TABLE revisions (
        sha TEXT PRIMARY KEY, subject TEXT NOT NULL, author TEXT NOT NULL,
        committed_at TEXT NOT NULL, first_seen TEXT NOT NULL);
INSERT INTO "revisions" VALUES('1111111111111111111111111111111111111111','Example fleet','alice','2026-10-01T10:00:00+00:00','2026-11-23T20:48:59+00:00');
INSERT INTO "revisions" VALUES('2222222222222222222222222222222222222222','Release 1.1.0','bob','2026-10-02T10:00:00+00:00','2026-11-23T20:48:59+00:00');
CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, revision TEXT,
        mode TEXT NOT NULL, trigger TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
        outcome TEXT, reason TEXT, message TEXT NOT NULL DEFAULT '',
        applied INTEGER NOT NULL DEFAULT 0, summary TEXT NOT NULL DEFAULT '{}');
INSERT INTO "runs" VALUES(1,'staging','1111111111111111111111111111111111111111','sync','manual','2026-11-23T20:48:59+00:00','2026-11-23T20:48:59+00:00','converged',NULL,'corrected: web1.staging, web2.staging',1,'{"drifted": ["web1.staging"]}');
INSERT INTO "runs" VALUES(2,'staging','2222222222222222222222222222222222222222','check','manual','2026-11-23T20:48:59+00:00','2026-11-23T20:48:59+00:00','drifted',NULL,'drifted: web1.staging',0,'{"drifted": ["web1.staging"]}');
INSERT INTO "runs" VALUES(3,'staging','2222222222222222222222222222222222222222','sync','manual','2026-11-23T20:48:59+00:00','2026-11-23T20:48:59+00:00','converged',NULL,'corrected: web1.staging',1,'{"drifted": ["web1.staging"]}');
INSERT INTO "runs" VALUES(4,'production','2222222222222222222222222222222222222222','sync','manual','2026-11-23T20:48:59+00:00','2026-11-23T20:48:59+00:00','drifted',NULL,'drifted: web1.prod; not applied (policy detect)',0,'{"drifted": ["web1.staging"]}');
CREATE TABLE suspensions (app TEXT PRIMARY KEY, since TEXT NOT NULL, reason TEXT NOT NULL);
INSERT INTO "suspensions" VALUES('production','2026-11-23T20:48:59+00:00','change freeze');
CREATE TABLE task_results (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs (id),
        phase TEXT NOT NULL, host TEXT NOT NULL, task TEXT NOT NULL, action TEXT NOT NULL,
        status TEXT NOT NULL, diff TEXT NOT NULL, message TEXT NOT NULL);
INSERT INTO "task_results" VALUES(1,1,'check','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
INSERT INTO "task_results" VALUES(2,1,'apply','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
INSERT INTO "task_results" VALUES(3,2,'check','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
INSERT INTO "task_results" VALUES(4,3,'check','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
INSERT INTO "task_results" VALUES(5,3,'apply','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
INSERT INTO "task_results" VALUES(6,4,'check','web1.staging','app : Render the application configuration','ansible.builtin.template','changed','-workers: 64
+workers: 2
','');
CREATE INDEX runs_app ON runs (app, id);
CREATE INDEX task_results_run ON task_results (run_id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('runs',4);
INSERT INTO "sqlite_sequence" VALUES('task_results',6);
COMMIT;
