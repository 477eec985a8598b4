// @generated automatically by Diesel CLI, then edited: the generated `tsvector` columns
// (`conversations.title_search`, `messages.content_search`) are left out. Only the raw-SQL
// search reads them, and core Diesel has no tsvector type.

diesel::table! {
    agents (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        avatar -> Text,
        model -> Text,
        system_prompt -> Nullable<Text>,
        temperature -> Nullable<Float4>,
        max_output_tokens -> Nullable<Int4>,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    conversations (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        created_by -> Nullable<Uuid>,
        title -> Nullable<Text>,
        system_prompt -> Nullable<Text>,
        model -> Text,
        pinned -> Bool,
        archived -> Bool,
        active_leaf_id -> Nullable<Uuid>,
        message_count -> Int4,
        preview -> Nullable<Text>,
        last_message_at -> Nullable<Timestamptz>,
        sort_at -> Timestamptz,
        last_seq -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        agent_id -> Nullable<Uuid>,
        temperature -> Nullable<Float4>,
        max_output_tokens -> Nullable<Int4>,
    }
}

diesel::table! {
    messages (id) {
        id -> Uuid,
        conversation_id -> Uuid,
        parent_id -> Nullable<Uuid>,
        seq -> Int4,
        depth -> Int4,
        role -> Text,
        content -> Text,
        status -> Text,
        model -> Nullable<Text>,
        prompt_tokens -> Nullable<Int4>,
        completion_tokens -> Nullable<Int4>,
        cost_micro_usd -> Nullable<Int8>,
        error -> Nullable<Text>,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        client_message_id -> Nullable<Text>,
        runner_instance -> Nullable<Uuid>,
        content_seq -> Int4,
        stop_requested -> Bool,
        first_token_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    comparisons (id) {
        id -> Uuid,
        user_message_id -> Uuid,
        conversation_id -> Uuid,
        workspace_id -> Uuid,
        status -> Text,
        judge_model -> Nullable<Text>,
        judged_by -> Nullable<Text>,
        judged_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    comparison_entries (comparison_id, position) {
        comparison_id -> Uuid,
        position -> Int4,
        message_id -> Uuid,
        model -> Text,
        summary -> Nullable<Text>,
        reasoning -> Nullable<Text>,
        score -> Nullable<Float8>,
        rank -> Nullable<Int4>,
    }
}

diesel::table! {
    message_votes (message_id, user_id) {
        message_id -> Uuid,
        user_id -> Uuid,
        vote -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    instances (id) {
        id -> Uuid,
        hostname -> Text,
        pid -> Int4,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        kind -> Text,
        dedupe_key -> Nullable<Text>,
        payload -> Jsonb,
        run_at -> Timestamptz,
        attempts -> Int4,
        max_attempts -> Int4,
        locked_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    password_reset_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    provider_keys (workspace_id, provider) {
        workspace_id -> Uuid,
        provider -> Text,
        nonce -> Bytea,
        ciphertext -> Bytea,
        last4 -> Text,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        display_name -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        password_changed_at -> Timestamptz,
    }
}

diesel::table! {
    workspace_members (workspace_id, user_id) {
        workspace_id -> Uuid,
        user_id -> Uuid,
        role -> Text,
        joined_at -> Timestamptz,
        token_limit -> Nullable<Int8>,
        tokens_used -> Int8,
        tokens_reserved -> Int8,
        period_start -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    quota_reservations (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        user_id -> Nullable<Uuid>,
        message_id -> Nullable<Uuid>,
        model -> Text,
        tokens -> Int8,
        prompt_tokens -> Int8,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    usage_records (id) {
        id -> Uuid,
        workspace_id -> Uuid,
        user_id -> Nullable<Uuid>,
        conversation_id -> Nullable<Uuid>,
        message_id -> Nullable<Uuid>,
        model -> Text,
        prompt_tokens -> Int8,
        completion_tokens -> Int8,
        cost_micro_usd -> Int8,
        estimated -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    workspace_quotas (workspace_id) {
        workspace_id -> Uuid,
        period -> Text,
        token_limit -> Nullable<Int8>,
        message_limit -> Nullable<Int8>,
        tokens_used -> Int8,
        tokens_reserved -> Int8,
        messages_used -> Int8,
        period_start -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    workspaces (id) {
        id -> Uuid,
        name -> Text,
        personal -> Bool,
        created_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(agents -> users (created_by));
diesel::joinable!(agents -> workspaces (workspace_id));
diesel::joinable!(conversations -> agents (agent_id));
diesel::joinable!(comparison_entries -> comparisons (comparison_id));
diesel::joinable!(comparison_entries -> messages (message_id));
diesel::joinable!(comparisons -> conversations (conversation_id));
diesel::joinable!(comparisons -> messages (user_message_id));
diesel::joinable!(comparisons -> workspaces (workspace_id));
diesel::joinable!(conversations -> users (created_by));
diesel::joinable!(conversations -> workspaces (workspace_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(message_votes -> messages (message_id));
diesel::joinable!(message_votes -> users (user_id));
diesel::joinable!(messages -> users (created_by));
diesel::joinable!(password_reset_tokens -> users (user_id));
diesel::joinable!(provider_keys -> workspaces (workspace_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(workspace_members -> users (user_id));
diesel::joinable!(workspace_members -> workspaces (workspace_id));
diesel::joinable!(workspace_quotas -> workspaces (workspace_id));
diesel::joinable!(workspaces -> users (created_by));

diesel::allow_tables_to_appear_in_same_query!(
    agents,
    comparison_entries,
    comparisons,
    conversations,
    instances,
    jobs,
    message_votes,
    messages,
    password_reset_tokens,
    provider_keys,
    quota_reservations,
    refresh_tokens,
    sessions,
    usage_records,
    users,
    workspace_members,
    workspace_quotas,
    workspaces,
);
