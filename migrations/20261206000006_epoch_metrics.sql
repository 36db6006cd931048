-- The metrics a training step reported for each epoch (losses, precision/recall, mAP...), for
-- charts: the step's progress keeps only the latest report. One row per epoch, the metrics of
-- all the epoch's reports merged (a later value of a key replaces the earlier one). Deleted with
-- the run.
CREATE TABLE epoch_metrics (
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id         TEXT NOT NULL,
    epoch           BIGINT NOT NULL,
    metrics_json    TEXT NOT NULL,
    reported_at     TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, epoch)
);
