-- The framework that trained a registered model (ultralytics, mmdetection, ...): the weights'
-- format alone does not say how to load them. Models registered before are unknown (NULL).
ALTER TABLE models ADD COLUMN framework TEXT;
