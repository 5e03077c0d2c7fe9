-- title: Ingest problems
-- description: Files that could not be ingested (error) and frames ingested with a gap such
-- description: as no image type or no DATE-OBS (warning), unresolved, newest first.
-- param: severity (error, warning) | 'error' or 'warning'; both when not given
SELECT p.path,
       p.severity,
       p.reason,
       p.created_at,
       p.run_id
FROM ingest_problems p
WHERE p.resolved = FALSE
  AND (CAST(:severity AS VARCHAR(10)) IS NULL OR p.severity = :severity)
ORDER BY p.created_at DESC, p.id DESC
