-- Delete a lock only if this holder still holds it (KEYS[4] = lock, ARGV[3] = holder): a lock
-- that expired and was taken by another job is left alone.
unlock(KEYS[4], ARGV[3])
return 1
