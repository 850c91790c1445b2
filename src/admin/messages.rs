//! What the admin screens show: each status and reason code with a sentence in Japanese and in
//! English. Codes are stable (screens and scripts branch on them); the sentences may change.

use serde::Serialize;

use crate::tenants::UserStatus;

/// One sentence in both languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Text {
    pub ja: &'static str,
    pub en: &'static str,
}

/// A reason code with its sentences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: String,
    pub message: Text,
    /// Extra detail (e.g. the missing permission, Graph's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Reason {
    pub fn new(code: &str, detail: Option<String>) -> Reason {
        Reason {
            code: code.to_string(),
            message: reason(code),
            detail,
        }
    }
}

const fn t(ja: &'static str, en: &'static str) -> Text {
    Text { ja, en }
}

/// 認証済み / 認証失敗.
pub fn status_label(status: UserStatus) -> Text {
    match status {
        UserStatus::Authenticated => t("認証済み", "Authenticated"),
        UserStatus::AuthFailed => t("認証失敗", "Authentication failed"),
    }
}

/// What [`reason`] answers for a code it does not know.
pub const GENERIC: Text = t("エラーが発生しました", "An error occurred");

/// Whether `code` has a sentence of its own.
pub fn is_known(code: &str) -> bool {
    reason(code) != GENERIC
}

/// Every reason code with its sentence, `(code, ja, en)` (users, credentials, plans, bulk rows,
/// API errors).
const REASONS: &[(&str, &str, &str)] = &[
    // Linked users (also what the flush records when writes fail).
    (
        "unknown_user",
        "このアドレスは会社のMicrosoftテナントのユーザーではありません",
        "The address is not a user of the company's Microsoft tenant",
    ),
    (
        "no_mailbox",
        "このユーザーにはExchange Onlineのメールボックスがありません（ライセンス未割り当て、または非アクティブ）",
        "The user has no Exchange Online mailbox (no licence, or inactive)",
    ),
    (
        "policy_denied",
        "アプリケーションアクセスポリシーにより、このメールボックスへのアクセスが拒否されています",
        "An application access policy denies the app access to this mailbox",
    ),
    (
        "access_denied",
        "アクセスが拒否されました。アプリのアクセス許可（Calendars.ReadWrite、User.Read.All）と管理者の同意を確認してください",
        "Access denied: check the app's permissions (Calendars.ReadWrite, User.Read.All) and the admin consent",
    ),
    (
        "credentials_invalid",
        "会社のMicrosoft 365連携の認証情報が無効です",
        "The company's Microsoft 365 credentials are not valid",
    ),
    (
        "graph_rejected",
        "Microsoft Graphがリクエストを拒否しました",
        "Microsoft Graph refused the request",
    ),
    (
        "retries_exhausted",
        "Microsoftが混雑しているため、書き込みに繰り返し失敗しました",
        "Writes kept failing because Microsoft was busy",
    ),
    (
        "verification_unavailable",
        "Microsoftに接続できないため確認できませんでした。しばらくしてから再度お試しください",
        "Microsoft could not be reached to verify; try again later",
    ),
    // Credentials.
    (
        "ok",
        "認証情報とアクセス許可を確認しました",
        "The credentials and permissions are in order",
    ),
    (
        "invalid_secret",
        "クライアントシークレットが正しくありません（シークレットIDではなく値を入力してください）",
        "The client secret is invalid (enter the secret's value, not its ID)",
    ),
    (
        "expired_secret",
        "クライアントシークレットの有効期限が切れています。Azureポータルで新しいシークレットを作成してください",
        "The client secret has expired: create a new one in the Azure portal",
    ),
    (
        "app_not_in_tenant",
        "このテナントにアプリケーション（クライアントID）が見つかりません",
        "The application (client ID) was not found in the tenant",
    ),
    (
        "tenant_not_found",
        "テナントIDが見つかりません",
        "The tenant ID was not found",
    ),
    (
        "permission_not_granted",
        "必要なアクセス許可が付与されていません（管理者の同意が必要です）",
        "A required permission is not granted (admin consent is needed)",
    ),
    (
        "permission_recommended",
        "推奨されるアクセス許可（Contacts.Read）が付与されていません",
        "A recommended permission (Contacts.Read) is not granted",
    ),
    (
        "token_endpoint_error",
        "Microsoftのトークン発行が認証情報を拒否しました",
        "Microsoft's token endpoint refused the credentials",
    ),
    (
        "secret_expiring",
        "クライアントシークレットの有効期限が近づいています",
        "The client secret expires soon",
    ),
    (
        "secret_expired",
        "記録されたクライアントシークレットの有効期限を過ぎています",
        "The recorded client secret expiry date has passed",
    ),
    (
        "credentials_unreadable",
        "保存された認証情報を復号できません（暗号鍵の設定を確認してください）",
        "The stored credentials cannot be decrypted (check the encryption keys)",
    ),
    (
        "no_credentials",
        "Microsoft 365連携の認証情報が設定されていません",
        "The Microsoft 365 credentials are not set",
    ),
    // Plans.
    (
        "plan_excludes_integration",
        "Liteプランではカレンダー連携オプションを利用できません",
        "The Lite plan cannot use the calendar integration",
    ),
    (
        "lite_plus_without_schedule_option",
        "Lite Plusプランでは予定オプションの契約が必要です",
        "The Lite Plus plan needs the schedule option for the calendar integration",
    ),
    (
        "integration_disabled",
        "連携が無効です",
        "The integration is turned off",
    ),
    // Bulk rows.
    (
        "malformed_address",
        "メールアドレスの形式が正しくありません",
        "The address is not a well-formed email address",
    ),
    (
        "non_ascii_address",
        "メールアドレスに全角文字などASCII以外の文字が含まれています。MicrosoftのサインインID(UPN)を半角で入力してください",
        "The address has characters outside ASCII (full-width letters, for example); type the user's Microsoft sign-in name (UPN) in half-width characters",
    ),
    (
        "duplicate_row",
        "同じユーザーまたはアドレスの行がファイル内で重複しています",
        "The file has another row for this user or address",
    ),
    (
        "already_linked",
        "すでにこのアドレスで連携済みです",
        "Already linked to this address",
    ),
    (
        "address_in_use",
        "このアドレスは別のユーザーに連携されています",
        "The address is linked to another user",
    ),
    ("not_linked", "連携されていません", "Not linked"),
    (
        "missing_user_id",
        "ユーザーIDがありません",
        "The user id is missing",
    ),
    (
        "invalid_user_id",
        "ユーザーIDに使用できない文字が含まれています",
        "The user id has characters that are not allowed",
    ),
    (
        "invalid_action",
        "操作は link または unlink を指定してください",
        "The action must be link or unlink",
    ),
    (
        "malformed_row",
        "行の形式が正しくありません",
        "The row is malformed",
    ),
    // The admin API's own errors.
    (
        "unauthorized",
        "管理APIのトークンがないか、正しくありません",
        "A valid admin API bearer token is required",
    ),
    (
        "unknown_company",
        "会社が見つかりません",
        "The company is not known",
    ),
    (
        "unknown_job",
        "ジョブが見つからないか、記録の保存期間を過ぎています",
        "The job is not known, or its record has expired",
    ),
    (
        "invalid_company_id",
        "会社IDに使用できない文字が含まれています（半角英数字と . _ : - の1〜64文字）",
        "The company id must be 1 to 64 of A-Z a-z 0-9 . _ : -",
    ),
    (
        "invalid_tenant_id",
        "テナントIDは、ディレクトリ（テナント）IDのGUIDか、contoso.onmicrosoft.com のようなドメイン名で入力してください",
        "The tenant ID must be the directory (tenant) ID, a GUID, or a domain name such as contoso.onmicrosoft.com",
    ),
    (
        "invalid_client_id",
        "クライアントIDは、アプリケーション（クライアント）IDのGUIDで入力してください",
        "The client ID must be the application (client) ID, a GUID",
    ),
    (
        "invalid_body",
        "リクエストの内容が正しくありません",
        "The request body is not valid",
    ),
    (
        "invalid_query",
        "URLのパラメーターが正しくありません",
        "A query parameter is not valid",
    ),
    (
        "invalid_request",
        "リクエストが正しくありません",
        "The request is not valid",
    ),
    (
        "unsupported_media_type",
        "リクエストの形式（Content-Type）が正しくありません。JSONは application/json で送信してください",
        "The request's Content-Type is not accepted: send JSON as application/json",
    ),
    (
        "body_too_large",
        "リクエストが大きすぎます",
        "The request body is too large",
    ),
    (
        "unknown_route",
        "このURLの操作はありません",
        "There is no such operation at this URL",
    ),
    (
        "method_not_allowed",
        "このURLではこのHTTPメソッドを使用できません",
        "This URL does not accept this HTTP method",
    ),
    (
        "request_timeout",
        "処理が時間内に終わりませんでした。しばらくしてから再度お試しください",
        "The request did not finish in time; try again later",
    ),
    (
        "secrets_not_configured",
        "暗号鍵が設定されていないため、クライアントシークレットを保存できません（運用担当者に連絡してください）",
        "No encryption key is configured, so no client secret can be stored (contact the operators)",
    ),
    (
        "directory_unavailable",
        "会社・連携ユーザーのデータベースに接続できないため、変更していません。しばらくしてから再度お試しください（続く場合は運用担当者に連絡してください）",
        "The directory's database is unavailable, so nothing was changed; try again in a minute (contact the operators if it lasts)",
    ),
    (
        "internal",
        "サーバー内部でエラーが発生しました。しばらくしてから再度お試しください",
        "Something went wrong inside the service; try again later",
    ),
    (
        "too_many_rows",
        "ファイルの行数が多すぎます",
        "The file has too many rows",
    ),
    (
        "invalid_csv",
        "CSVファイルを読み取れません。UTF-8またはShift_JIS（Excelの「CSV（コンマ区切り）」）で保存してください",
        "The CSV file cannot be read: save it as UTF-8 or Shift_JIS (Excel's \"CSV (Comma delimited)\")",
    ),
    // Admin consent.
    (
        "invalid_state",
        "同意の応答に state がありません。cyzenから新しいリンクを発行してください",
        "The consent answer carries no state: issue a new link from cyzen",
    ),
    (
        "consent_state_expired",
        "この同意リンクは無効か、使用済みか、期限切れです。cyzenから新しいリンクを発行してください",
        "This consent link is unknown, already used or expired: issue a new link from cyzen",
    ),
    (
        "invalid_callback",
        "Microsoftからの応答が同意でも拒否でもありません",
        "Microsoft's answer is neither a grant nor a refusal",
    ),
    (
        "consent_credentials_changed",
        "このリンクの発行後に認証情報（テナントIDまたはクライアントID）が変更されたため、同意は記録されませんでした。cyzenから新しいリンクを発行してください",
        "The credentials (tenant ID or client ID) changed after this link was issued, so the consent was not recorded: issue a new link from cyzen",
    ),
    (
        "consent_tenant_mismatch",
        "同意したテナントが、設定されたテナントIDと一致しないため、同意は記録されませんでした。設定されたテナントの管理者アカウントで同意してください",
        "Consent was given in another tenant than the one the credentials name, so it was not recorded: consent with an administrator of the configured tenant",
    ),
    (
        "consent_tenant_unconfirmed",
        "テナントIDを確認できないため、同意は記録されませんでした。認証情報を「確認する」で確認してから、再度お試しください",
        "The tenant could not be confirmed, so the consent was not recorded: verify the credentials, then try again",
    ),
    // Dead letters and the ledger.
    (
        "dead_letter_not_found",
        "該当するデッドレターがありません",
        "No dead letter matches",
    ),
    (
        "dlq_busy",
        "別のデッドレター操作が実行中です。終わってから再度お試しください",
        "Another dead-letter operation is running; try again when it is done",
    ),
    (
        "dlq_publish_refused",
        "RabbitMQがメッセージの再送信を拒否しました",
        "RabbitMQ refused to publish a message again",
    ),
    (
        "dlq_archive_failed",
        "削除するデッドレターをアーカイブに書き込めませんでした（何も削除されていません）",
        "The dead letters could not be written to the archive (nothing was removed for them)",
    ),
    (
        "dlq_unavailable",
        "RabbitMQまたはRedisに接続できません。しばらくしてから再度お試しください",
        "RabbitMQ or Redis cannot be reached; try again later",
    ),
    (
        "purge_not_confirmed",
        "削除には \"confirm\": true と、確認した件数 \"expected\" が必要です。先に一覧を取得してください",
        "A purge needs \"confirm\": true and the count you saw as \"expected\": list first",
    ),
    (
        "purge_count_changed",
        "確認後にデッドレターの件数が変わりました。一覧を取得し直してください",
        "The number of matching dead letters changed since you looked: list them again",
    ),
    (
        "backlog_unavailable",
        "Redisに接続できないため、処理待ちの件数を表示できません",
        "Redis cannot be reached, so the backlog cannot be shown",
    ),
    (
        "ledger_unavailable",
        "Redisに接続できないため、同期履歴を表示できません",
        "Redis cannot be reached, so the sync ledger cannot be shown",
    ),
];

/// The sentence for a reason code (users, credentials, plans, bulk rows, API errors).
pub fn reason(code: &str) -> Text {
    REASONS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(GENERIC, |&(_, ja, en)| t(ja, en))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_pipeline_records_has_its_own_sentence() {
        let generic = reason("no-such-code");
        for code in [
            "unknown_user",
            "no_mailbox",
            "policy_denied",
            "access_denied",
            "invalid_secret",
            "expired_secret",
            "app_not_in_tenant",
            "tenant_not_found",
            "permission_not_granted",
            "plan_excludes_integration",
            "lite_plus_without_schedule_option",
            "malformed_address",
            "non_ascii_address",
            "duplicate_row",
            "already_linked",
        ] {
            assert_ne!(reason(code), generic, "{code}");
        }
        assert_eq!(status_label(UserStatus::Authenticated).ja, "認証済み");
        assert_eq!(status_label(UserStatus::AuthFailed).ja, "認証失敗");
    }

    #[test]
    fn every_code_is_listed_once() {
        let mut codes: Vec<&str> = REASONS.iter().map(|(c, _, _)| *c).collect();
        codes.sort_unstable();
        let n = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), n, "a code is listed twice");
    }
}
